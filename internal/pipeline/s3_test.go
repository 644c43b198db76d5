package pipeline_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/s3"
	"github.com/nhs-hub/hub/internal/miniotest"
	"github.com/nhs-hub/hub/internal/pipeline"
)

// The same run against the local lake and against MinIO publishes
// byte-identical parts.
func TestLocalAndMinIOPublishEqualData(t *testing.T) {
	srv := miniotest.Start(t)
	f := newFixture(t, 1500)
	local, err := pipeline.Run(t.Context(), f.config(t, key(t, 5), policy()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := s3.Open(t.Context(), s3.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: srv.Bucket(t), Prefix: "lake"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.config(t, key(t, 5), policy())
	cfg.Lake = catalog.NewLake(st)
	remote, err := pipeline.Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Lake.Verify(t.Context(), remote.Manifest); err != nil {
		t.Fatal(err)
	}
	for table, lt := range local.Manifest.Tables {
		rt := remote.Manifest.Tables[table]
		if lt.Rows != rt.Rows || len(lt.Parts) != len(rt.Parts) {
			t.Fatalf("%s: local %d rows in %d parts, MinIO %d in %d", table, lt.Rows, len(lt.Parts), rt.Rows, len(rt.Parts))
		}
		for i := range lt.Parts {
			if lt.Parts[i].SHA256 != rt.Parts[i].SHA256 {
				t.Errorf("%s part %d differs between the local lake and MinIO", table, i)
			}
		}
	}
	// A tampered object on S3 is detected on read.
	w, _ := st.Create(t.Context(), remote.Manifest.Tables["patients"].Parts[0].Path)
	w.Write([]byte("not parquet"))
	w.Close()
	if err := cfg.Lake.Verify(t.Context(), remote.Manifest); err == nil {
		t.Fatal("tampered part not detected")
	}
	// Readers list only committed versions.
	ds, err := cfg.Lake.Datasets(t.Context())
	if err != nil || len(ds) != 1 {
		t.Fatalf("datasets = %v, %v", ds, err)
	}
}

// TestNetworkCutMidUpload cuts the network between the hub and MinIO half
// way through a publish: the run fails with the upload named, nothing
// becomes visible, gc leaves the lake clean and the next run publishes.
func TestNetworkCutMidUpload(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := srv.Bucket(t)
	f := newFixture(t, 1500)
	open := func(endpoint string) *catalog.Lake {
		st, err := s3.Open(t.Context(), s3.Config{Endpoint: endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: bucket, Prefix: "lake"})
		if err != nil {
			t.Fatal(err)
		}
		return catalog.NewLake(st)
	}
	// How many bytes a whole publish sends, through a proxy that never cuts.
	whole := srv.Proxy(t, 0)
	cfg := f.config(t, key(t, 6), policy())
	cfg.Dataset, cfg.Lake = "measure", open(whole.Endpoint)
	if _, err := pipeline.Run(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	total := whole.Sent()

	cut := srv.Proxy(t, total/2)
	cfg = f.config(t, key(t, 6), policy())
	cfg.Lake = open(cut.Endpoint)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	_, err := pipeline.Run(ctx, cfg)
	if err == nil {
		t.Fatalf("a publish cut after %d of %d bytes succeeded", cut.Sent(), total)
	}
	t.Logf("cut after %d of %d bytes; failed in %v: %v", cut.Sent(), total, time.Since(start).Round(time.Millisecond), err)
	if ctx.Err() != nil {
		t.Fatal("the cut publish hung until the test's deadline")
	}
	if !strings.Contains(err.Error(), "upload") || !strings.Contains(err.Error(), "network error") {
		t.Errorf("the error does not say which write failed, and why: %v", err)
	}
	if strings.Contains(err.Error(), srv.SecretKey) {
		t.Fatal("the error reveals the secret key")
	}

	lake := open(srv.Endpoint)
	if v, err := lake.Versions(t.Context(), "test"); err != nil || len(v) != 0 {
		t.Fatalf("after the cut, versions = %v, %v; want none", v, err)
	}
	raw, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	unfinished := func() int {
		n := 0
		for u := range raw.ListIncompleteUploads(t.Context(), bucket, "", true) {
			if strings.HasPrefix(u.Key, "lake/datasets/test/") {
				n++
			}
		}
		return n
	}
	if unfinished() == 0 {
		t.Error("the cut left no unfinished multipart upload: the test did not cut mid-upload")
	}
	if _, err := lake.GC(t.Context(), "test", 0); err != nil {
		t.Fatal(err)
	}
	if left, _ := lake.Store().List(t.Context(), "datasets/test/"); len(left) != 0 {
		t.Fatalf("gc left %v", left)
	}
	if n := unfinished(); n != 0 {
		t.Fatalf("gc left %d unfinished uploads holding storage", n)
	}
	cfg = f.config(t, key(t, 6), policy())
	cfg.Lake = lake
	res, err := pipeline.Run(t.Context(), cfg)
	if err != nil {
		t.Fatalf("the run after the cut: %v", err)
	}
	if err := lake.Verify(t.Context(), res.Manifest); err != nil {
		t.Fatal(err)
	}
}
