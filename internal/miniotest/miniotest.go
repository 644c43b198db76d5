// Package miniotest starts a real MinIO server for tests, on a free
// 127.0.0.1 port with a temporary data folder, and stops it afterwards.
// The binary is HUB_MINIO_BIN or bin/minio (built by `make minio`). A test
// skips without it, but under CI (CI=true) a missing binary is a failure.
package miniotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Server is a running MinIO.
type Server struct {
	Endpoint  string
	AccessKey string
	SecretKey string
}

// Binary returns the MinIO binary's path, or "".
func Binary() string {
	if p := os.Getenv("HUB_MINIO_BIN"); p != "" {
		return p
	}
	_, here, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(here), "..", "..", "bin", "minio")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return ""
}

// Start starts MinIO for the test and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("MinIO binary missing under CI: run `make minio` first")
		}
		t.Skip("no MinIO binary; run `make minio`")
	}
	s, stop, err := Launch(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return s
}

// Launch starts MinIO from bin on a free 127.0.0.1 port with data in dir,
// waits until it is ready, and returns it with a function that stops it.
func Launch(bin, dir string) (*Server, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	addr := l.Addr().String()
	l.Close()
	var b [12]byte
	rand.Read(b[:])
	s := &Server{Endpoint: addr, AccessKey: "hubtest", SecretKey: hex.EncodeToString(b[:])}
	cmd := exec.Command(bin, "server", "--quiet", "--address", addr, "--console-address", "127.0.0.1:0", dir)
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start MinIO: %w", err)
	}
	stop := func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, stop, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, fmt.Errorf("MinIO at %s not ready after 60 s", addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Bucket creates a bucket with a fresh name and returns it.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	name, err := s.MakeBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// MakeBucket creates a bucket with a fresh name.
func (s *Server) MakeBucket(ctx context.Context) (string, error) {
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")})
	if err != nil {
		return "", err
	}
	var b [4]byte
	rand.Read(b[:])
	name := fmt.Sprintf("hub-test-%s", hex.EncodeToString(b[:]))
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		return "", fmt.Errorf("make bucket: %w", err)
	}
	return name, nil
}
