package pipeline_test

import (
	"testing"

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
