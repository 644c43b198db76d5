package icelake_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	icebergio "github.com/apache/iceberg-go/io"
	"github.com/apache/iceberg-go/table"
	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/testlake"
)

// An outside reader (iceberg-go, knowing nothing of the hub's manifest)
// reads every table of a published version from its Iceberg metadata,
// with the manifest's row counts; the metadata names the parts where
// they are; and a version without a manifest has no Iceberg tables left
// once abandoned.
func TestOutsideReaderReadsIceberg(t *testing.T) {
	l, root, err := testlake.Publish(t.Context(), 2000)
	if root != "" {
		t.Cleanup(func() { os.RemoveAll(filepath.Dir(root)) })
	}
	if err != nil {
		t.Fatal(err)
	}
	m, err := l.Manifest(t.Context(), "gp", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Tables) != len(ingest.Tables) {
		t.Fatalf("%d tables", len(m.Tables))
	}
	for name, tm := range m.Tables {
		if tm.Iceberg == "" || !strings.HasPrefix(tm.Iceberg, "datasets/gp/versions/1/iceberg/"+name+"/metadata/") {
			t.Fatalf("%s: Iceberg metadata at %q", name, tm.Iceberg)
		}
		loc := filepath.Join(root, tm.Iceberg)
		tbl, err := table.NewFromLocation(t.Context(), table.Identifier{"gp", name}, loc, icebergio.LoadFSFunc(nil, loc), nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		at, err := tbl.Scan().ToArrowTable(t.Context())
		if err != nil {
			t.Fatalf("%s: scan: %v", name, err)
		}
		if at.NumRows() != tm.Rows || tm.Rows == 0 && name != "procedures" {
			t.Errorf("%s: Iceberg reads %d rows, the manifest has %d", name, at.NumRows(), tm.Rows)
		}
		if at.Schema().NumFields() != len(tm.Schema) {
			t.Errorf("%s: %d columns, the manifest %d", name, at.Schema().NumFields(), len(tm.Schema))
		}
		at.Release()
		// The snapshot's data files are the manifest's parts, in place.
		files := 0
		tasks, err := tbl.Scan().PlanFiles(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			files++
			if !strings.HasPrefix(task.File.FilePath(), root+"/datasets/gp/versions/1/"+name+"/part-") {
				t.Errorf("%s: data file %s", name, task.File.FilePath())
			}
		}
		if files != len(tm.Parts) {
			t.Errorf("%s: %d data files, %d parts", name, files, len(tm.Parts))
		}
	}

	// The engine tables are Iceberg tables too (engine_TABLE), over their
	// one file each.
	if len(m.EngineTables) != 8 {
		t.Fatalf("%d engine tables", len(m.EngineTables))
	}
	for name, tm := range m.EngineTables {
		if !strings.HasPrefix(tm.Iceberg, "datasets/gp/versions/1/iceberg/engine_"+name+"/metadata/") {
			t.Fatalf("engine %s: Iceberg metadata at %q", name, tm.Iceberg)
		}
		loc := filepath.Join(root, tm.Iceberg)
		tbl, err := table.NewFromLocation(t.Context(), table.Identifier{"gp", "engine_" + name}, loc, icebergio.LoadFSFunc(nil, loc), nil)
		if err != nil {
			t.Fatalf("engine %s: %v", name, err)
		}
		at, err := tbl.Scan().ToArrowTable(t.Context())
		if err != nil {
			t.Fatalf("engine %s: scan: %v", name, err)
		}
		if at.NumRows() != tm.Rows || at.Schema().NumFields() != len(tm.Schema) || at.Schema().Field(0).Name != "pid" {
			t.Errorf("engine %s: Iceberg reads %d rows and %v, the manifest has %d rows and %d columns", name, at.NumRows(), at.Schema(), tm.Rows, len(tm.Schema))
		}
		at.Release()
		tasks, err := tbl.Scan().PlanFiles(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(tasks) != 1 || tasks[0].File.FilePath() != root+"/datasets/gp/versions/1/engine/"+name+".parquet" {
			t.Errorf("engine %s: %d data files", name, len(tasks))
		}
	}

	// The manifest checks the Iceberg tables' files too: verify passes,
	// and fails once a metadata file is changed.
	if len(m.IcebergFiles) < 8*3 {
		t.Fatalf("%d Iceberg files in the manifest", len(m.IcebergFiles))
	}
	if err := l.Verify(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	meta := filepath.Join(root, m.Tables["patients"].Iceberg)
	b, _ := os.ReadFile(meta)
	os.WriteFile(meta, []byte(strings.Replace(string(b), "/versions/1/", "/versions/9/", 1)), 0o644)
	if err := l.Verify(t.Context(), m); !errors.Is(err, catalog.ErrTampered) {
		t.Errorf("verify after changing %s: %v", m.Tables["patients"].Iceberg, err)
	}
	os.WriteFile(meta, b, 0o644)

	// A publication abandoned after its Iceberg tables were written
	// leaves none of their files.
	pub, err := l.Begin(t.Context(), "gp")
	if err != nil {
		t.Fatal(err)
	}
	w, _ := pub.Create(t.Context(), "patients", 0)
	src, _ := os.ReadFile(filepath.Join(root, m.Tables["patients"].Parts[0].Path))
	w.Write(src)
	w.Close()
	if _, err := icelakeRegister(t, root, pub); err != nil {
		t.Fatal(err)
	}
	if err := pub.Abandon(t.Context()); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(root, "datasets/gp/versions/2/iceberg/*/metadata/*.json"))
	if len(left) != 0 {
		t.Errorf("abandoned: %v left", left)
	}
	// The folders a removal of files leaves (the lake's gc removes files)
	// do not stop the version's number being registered again.
	w, _ = pub.Create(t.Context(), "patients", 0)
	w.Write(src)
	w.Close()
	if _, err := icelakeRegister(t, root, pub); err != nil {
		t.Fatalf("registering over an abandoned version's empty folders: %v", err)
	}
}
