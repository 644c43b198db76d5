//go:build !chdb

package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// A build without ClickHouse says how to get one when asked for it,
// before it listens.
func TestEngineClickHouseNeedsTheBuild(t *testing.T) {
	dir := t.TempDir()
	_, err := runHub(t, "serve", "--engine", "clickhouse", "--lake", filepath.Join(dir, "lake"), "--state", filepath.Join(dir, "state"),
		"--addr", "127.0.0.1:0", "--checkpoint-every", "0")
	if err == nil || !strings.Contains(err.Error(), "-tags chdb") {
		t.Fatalf("hub serve --engine clickhouse without ClickHouse: %v", err)
	}
	if _, err := runHub(t, "serve", "--engine", "oracle", "--lake", filepath.Join(dir, "lake"), "--state", filepath.Join(dir, "state"),
		"--addr", "127.0.0.1:0", "--checkpoint-every", "0"); err == nil || !strings.Contains(err.Error(), "duckdb or clickhouse") {
		t.Fatalf("hub serve --engine oracle: %v", err)
	}
}
