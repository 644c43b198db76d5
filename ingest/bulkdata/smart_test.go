package bulkdata_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/nhs-hub/hub/ingest/bulkdata"
	"github.com/nhs-hub/hub/internal/bulktest"
)

// register makes a client key and registers its public JWKS with srv.
func register(t *testing.T, srv *bulktest.Server, alg string) *bulkdata.Key {
	t.Helper()
	k, err := bulkdata.NewKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := k.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	if k, err = bulkdata.ParseKey(pemBytes); err != nil { // as `hub fhir keygen` leaves it
		t.Fatal(err)
	}
	raw, err := k.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), `"d"`) {
		t.Fatal("the JWKS holds the private key")
	}
	srv.Auth = &bulktest.Auth{ClientID: "hub-test", JWKS: set}
	return k
}

func TestPullWithSMARTBackendServices(t *testing.T) {
	src := export(t)
	for _, alg := range []string{"ES384", "RS384"} {
		t.Run(alg, func(t *testing.T) {
			srv := bulktest.New(t, src)
			k := register(t, srv, alg)
			// A token really serves five requests though the server says it
			// lasts five minutes: the pull meets expiry mid-download, again
			// and again, and gets new ones.
			srv.Auth.Uses = 5
			dir := filepath.Join(t.TempDir(), "pull")
			st, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: dir, Poll: time.Millisecond,
				Auth: &bulkdata.Auth{ClientID: "hub-test", Key: k}})
			if err != nil {
				t.Fatal(err)
			}
			if !st.Complete || srv.Issued < 3 || srv.Refused < 2 {
				t.Errorf("complete %v, %d tokens issued, %d requests refused: the expiry was not met and mended", st.Complete, srv.Issued, srv.Refused)
			}
			// No key or token reached the pull's state.
			b, _ := os.ReadFile(filepath.Join(dir, "pull.json"))
			if strings.Contains(string(b), "Bearer") || strings.Contains(string(b), "PRIVATE") {
				t.Error("pull.json holds a credential")
			}
			// A replayed assertion (the same jti) is refused.
			resp, err := http.PostForm(strings.TrimSuffix(srv.Base(), "/fhir")+"/token", url.Values{"grant_type": {"client_credentials"}, "scope": {"system/*.rs"},
				"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {srv.Assertion}})
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("a replayed assertion got %d", resp.StatusCode)
			}
		})
	}
}

func TestPullAuthorisationErrors(t *testing.T) {
	src := export(t)
	t.Run("no credentials", func(t *testing.T) {
		srv := bulktest.New(t, src)
		register(t, srv, "ES384")
		_, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: t.TempDir(), Poll: time.Millisecond})
		if err == nil || !strings.Contains(err.Error(), "SMART Backend Services") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unregistered key", func(t *testing.T) {
		srv := bulktest.New(t, src)
		register(t, srv, "ES384")
		other, _ := bulkdata.NewKey("ES384")
		_, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: t.TempDir(), Poll: time.Millisecond,
			Auth: &bulkdata.Auth{ClientID: "hub-test", Key: other}})
		var te *bulkdata.TokenError
		if !errors.As(err, &te) || te.Code != "invalid_client" || !strings.Contains(err.Error(), "JWKS") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("v1 scopes only", func(t *testing.T) {
		srv := bulktest.New(t, src)
		k := register(t, srv, "ES384")
		srv.Auth.Scopes = []string{"system/*.read"}
		if _, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: t.TempDir(), Poll: time.Millisecond,
			Auth: &bulkdata.Auth{ClientID: "hub-test", Key: k}}); err != nil {
			t.Fatal(err)
		}
	})
}

// A 401 that persists (the server takes no token of ours) ends the pull
// with the server's answer after a bounded number of new tokens, not a
// loop.
func TestPersistent401Ends(t *testing.T) {
	srv := bulktest.New(t, export(t))
	k := register(t, srv, "ES384")
	srv.Auth.Uses = -1 // every token is refused
	_, err := bulkdata.Pull(t.Context(), bulkdata.Config{Base: srv.Base(), Dir: filepath.Join(t.TempDir(), "pull"), Poll: time.Millisecond,
		Auth: &bulkdata.Auth{ClientID: "hub-test", Key: k}})
	var se *bulkdata.ServerError
	if !errors.As(err, &se) || se.Status != http.StatusUnauthorized {
		t.Fatalf("pull with every token refused: %v", err)
	}
	if srv.Issued != 4 {
		t.Errorf("%d tokens issued for one refused request, want 1 + 3 renewals", srv.Issued)
	}
}
