package catalog

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The HDR UK export validates against the HDR UK Gateway's schemas
// (catalog/testdata/hdruk, from HDRUK/schemata): the newest, 4.0.0, and
// 2.1.2 (--hdruk-version), formats asserted.
func TestHDRUKValidates(t *testing.T) {
	for _, version := range HDRUKVersions {
		t.Run(version, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", "hdruk", version, "schema.json"))
			if err != nil {
				t.Fatal(err)
			}
			doc, err := jsonschema.UnmarshalJSON(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			c := jsonschema.NewCompiler()
			c.AssertFormat()
			if err := c.AddResource("hdruk.json", doc); err != nil {
				t.Fatal(err)
			}
			sch, err := c.Compile("hdruk.json")
			if err != nil {
				t.Fatal(err)
			}
			opt := testExport
			opt.HDRUKVersion = version
			out, err := Export(testManifest(), "hdruk", opt)
			if err != nil {
				t.Fatal(err)
			}
			v, err := jsonschema.UnmarshalJSON(bytes.NewReader(out))
			if err != nil {
				t.Fatal(err)
			}
			if err := sch.Validate(v); err != nil {
				t.Errorf("the export does not validate against HDR UK %s:\n%v\n%s", version, err, out)
			}
		})
	}
}
