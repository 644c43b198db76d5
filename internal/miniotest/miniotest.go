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
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
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

// A Proxy forwards TCP connections to a MinIO server and can cut the
// network: once the clients have sent Cut bytes, every open connection is
// closed and every new one is refused, as when a link goes down mid-upload.
type Proxy struct {
	Endpoint string

	cut  int64 // 0: never
	mu   sync.Mutex
	sent int64
	down bool
	open map[net.Conn]bool
	l    net.Listener
}

// Proxy starts a proxy to s that cuts the network after cut bytes sent by
// clients (never when cut is 0), and stops it when the test ends.
func (s *Server) Proxy(t testing.TB, cut int64) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Endpoint: l.Addr().String(), cut: cut, open: map[net.Conn]bool{}, l: l}
	go p.serve(s.Endpoint)
	t.Cleanup(func() { l.Close(); p.closeAll() })
	return p
}

// Sent returns how many bytes clients have sent through the proxy.
func (p *Proxy) Sent() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent
}

func (p *Proxy) serve(target string) {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		if !down {
			p.open[c] = true
		}
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		go p.forward(c, target)
	}
}

func (p *Proxy) forward(c net.Conn, target string) {
	u, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.open[u] = true
	p.mu.Unlock()
	go func() { io.Copy(c, u); c.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			p.mu.Lock()
			p.sent += int64(n)
			cut := p.cut > 0 && p.sent >= p.cut
			p.mu.Unlock()
			if cut {
				p.closeAll()
				return
			}
			if _, werr := u.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	u.Close()
	c.Close()
	p.mu.Lock()
	delete(p.open, c)
	delete(p.open, u)
	p.mu.Unlock()
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.open {
		c.Close()
	}
	p.open = map[net.Conn]bool{}
}
