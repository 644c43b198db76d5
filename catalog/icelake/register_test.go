package icelake_test

import (
	"testing"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/icelake"
)

func icelakeRegister(t *testing.T, root string, pub *catalog.Publication) (map[string]string, error) {
	return icelake.Register(t.Context(), root, pub.Prefix(), pub.Parts(), nil)
}
