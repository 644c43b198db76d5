package file_test

import (
	"testing"

	"github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/catalog/storetest"
)

func TestStore(t *testing.T) {
	d, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, d)
}
