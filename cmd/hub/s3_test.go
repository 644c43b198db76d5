package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nhs-hub/hub/catalog/s3"
	"github.com/nhs-hub/hub/internal/miniotest"
)

// An extract dropped in an S3 landing area is published to an S3 lake.
func TestPublishS3ToS3(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := srv.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("HUB_S3_ENDPOINT", srv.Endpoint)
	t.Setenv("HUB_S3_TLS", "false")

	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "300", "--out", dir, "--gzip"); err != nil {
		t.Fatal(err)
	}
	landing, err := s3.Open(t.Context(), s3.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: bucket, Prefix: "landing/2025-01"})
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if err := upload(t.Context(), landing, filepath.Join(dir, e.Name()), e.Name()); err != nil {
			t.Fatal(err)
		}
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, []byte(strings.Repeat("k", 32)), 0o600)
	lake := "s3://" + bucket + "/lake"
	out, err := runHub(t, "ingest", "--extract", "s3://"+bucket+"/landing/2025-01", "--optouts", filepath.Join(dir, "optouts.txt"),
		"--dataset", "s3demo", "--lake", lake, "--key-file", keyFile)
	if err != nil || !strings.Contains(out, "published s3demo@1") {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	out, err = runHub(t, "catalog", "show", "--lake", lake, "--verify", "s3demo")
	if err != nil || !strings.Contains(out, "every part verified") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	if _, err := runHub(t, "catalog", "list", "--lake", lake); err == nil || !strings.Contains(err.Error(), "check the access key") {
		t.Fatalf("wrong secret: %v", err)
	}
}

func upload(ctx context.Context, st *s3.Store, path, name string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	w, err := st.Create(ctx, name)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	return w.Close()
}
