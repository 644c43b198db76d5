package s3_test

import (
	"strings"
	"testing"

	"github.com/nhs-hub/hub/catalog/s3"
	"github.com/nhs-hub/hub/catalog/storetest"
	"github.com/nhs-hub/hub/internal/miniotest"
)

func TestStore(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := srv.Bucket(t)
	st, err := s3.Open(t.Context(), s3.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
		Bucket: bucket, Prefix: "lake", PartSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, st)
}

func TestOpenErrors(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := srv.Bucket(t)
	tests := []struct {
		name string
		cfg  s3.Config
		want string
	}{
		{"wrong secret", s3.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: "wrong", Bucket: bucket}, "check the access key"},
		{"missing bucket", s3.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: "no-such-bucket"}, "does not exist"},
		{"nothing listening", s3.Config{Endpoint: "127.0.0.1:1", AccessKey: "a", SecretKey: "b", Bucket: bucket}, "reach bucket"},
		{"nothing listening, said so", s3.Config{Endpoint: "127.0.0.1:1", AccessKey: "a", SecretKey: "b", Bucket: bucket}, "network error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s3.Open(t.Context(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), srv.SecretKey) {
				t.Fatal("error reveals the secret key")
			}
		})
	}
}

func TestParseURL(t *testing.T) {
	b, p, err := s3.ParseURL("s3://lake/datasets/x/")
	if err != nil || b != "lake" || p != "datasets/x" {
		t.Fatalf("got %q %q %v", b, p, err)
	}
	if _, _, err := s3.ParseURL("/tmp/lake"); err == nil {
		t.Fatal("accepted a folder")
	}
}
