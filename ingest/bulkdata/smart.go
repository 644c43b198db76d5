package bulkdata

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// SMART Backend Services (the SMART App Launch IG's client-confidential-
// asymmetric profile): the client authenticates to the token endpoint
// with a JWT it signs with its private key (RS384 or ES384), whose public
// half the server has registered as a JWKS, and gets a short-lived access
// token for system scopes. JOSE is go-jose's; nothing here parses or signs
// a JWT by hand. Keys and tokens never appear in logs or errors.

// Scopes asked for: SMART v2 first, then v1's when the server refuses
// those.
const (
	ScopeV2 = "system/*.rs"
	ScopeV1 = "system/*.read"
)

// A Key is the client's signing key and its id in the registered JWKS.
type Key struct {
	Signer crypto.Signer
	ID     string
	Alg    jose.SignatureAlgorithm // RS384 or ES384
}

// NewKey makes a key pair: ES384 (P-384) or RS384 (RSA 3072).
func NewKey(alg string) (*Key, error) {
	var signer crypto.Signer
	var err error
	switch strings.ToUpper(alg) {
	case "ES384":
		signer, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "RS384":
		signer, err = rsa.GenerateKey(rand.Reader, 3072)
	default:
		return nil, fmt.Errorf("key algorithm %q: use ES384 or RS384", alg)
	}
	if err != nil {
		return nil, err
	}
	var id [8]byte
	rand.Read(id[:])
	return &Key{Signer: signer, ID: hex.EncodeToString(id[:]), Alg: jose.SignatureAlgorithm(strings.ToUpper(alg))}, nil
}

// pemType is the PEM block type of a private key file; its headers hold
// the key id and algorithm.
const pemType = "PRIVATE KEY"

// MarshalPEM returns the private key as PKCS #8 PEM, with its id and
// algorithm as headers. It is a secret: write it 0600.
func (k *Key) MarshalPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.Signer)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Headers: map[string]string{"kid": k.ID, "alg": string(k.Alg)}, Bytes: der}), nil
}

// ParseKey reads a key written by MarshalPEM.
func ParseKey(b []byte) (*Key, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemType {
		return nil, errors.New("not a PEM private key written by `hub fhir keygen`")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("the PEM block is not a PKCS #8 private key")
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("the key cannot sign")
	}
	alg := jose.SignatureAlgorithm(block.Headers["alg"])
	if alg != jose.RS384 && alg != jose.ES384 {
		return nil, fmt.Errorf("key algorithm %q: use ES384 or RS384", alg)
	}
	if block.Headers["kid"] == "" {
		return nil, errors.New("the key has no kid header")
	}
	return &Key{Signer: signer, ID: block.Headers["kid"], Alg: alg}, nil
}

// JWKS returns the public key set to register with the server.
func (k *Key) JWKS() ([]byte, error) {
	jwk := jose.JSONWebKey{Key: k.Signer.Public(), KeyID: k.ID, Algorithm: string(k.Alg), Use: "sig"}
	return json.MarshalIndent(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk}}, "", "  ")
}

// Auth authorises a client with SMART Backend Services.
type Auth struct {
	ClientID string
	Key      *Key
}

// A tokenSource holds the current access token and gets a new one from
// the token endpoint before it expires.
type tokenSource struct {
	auth     Auth
	base     string // the FHIR base, for .well-known/smart-configuration
	client   *http.Client
	mu       sync.Mutex
	endpoint string
	scope    string
	token    string
	expires  time.Time
}

// fhirBase returns the FHIR base of an export URL: a Group's or Patient's
// export is [base]/Group/ID or [base]/Patient.
func fhirBase(u string) string {
	u = strings.TrimSuffix(u, "/")
	if i := strings.LastIndex(u, "/Group/"); i >= 0 {
		return u[:i]
	}
	return strings.TrimSuffix(u, "/Patient")
}

// authorize sets the request's bearer token, getting one first when there
// is none or it expires soon; with renew, a new one whatever the old.
func (ts *tokenSource) authorize(ctx context.Context, req *http.Request, renew bool) error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if renew || ts.token == "" || time.Until(ts.expires) < 10*time.Second {
		if err := ts.refresh(ctx); err != nil {
			return err
		}
	}
	req.Header.Set("Authorization", "Bearer "+ts.token)
	return nil
}

// refresh gets a new access token; the caller holds ts.mu.
func (ts *tokenSource) refresh(ctx context.Context) error {
	if ts.endpoint == "" {
		ep, err := ts.discover(ctx)
		if err != nil {
			return err
		}
		ts.endpoint = ep
	}
	scopes := []string{ScopeV2, ScopeV1}
	if ts.scope != "" {
		scopes = []string{ts.scope}
	}
	var last error
	for _, scope := range scopes {
		tok, ttl, err := ts.request(ctx, scope)
		if err == nil {
			ts.token, ts.scope = tok, scope
			ts.expires = time.Now().Add(ttl)
			return nil
		}
		last = err
		var te *TokenError
		if !errors.As(err, &te) || te.Code != "invalid_scope" {
			break
		}
	}
	return last
}

// discover reads the token endpoint from the server's SMART configuration.
func (ts *tokenSource) discover(ctx context.Context) (string, error) {
	u := fhirBase(ts.base) + "/.well-known/smart-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := ts.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("read the SMART configuration: %w", redactURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", &ServerError{Op: "read the SMART configuration", Status: resp.StatusCode}
	}
	var conf struct {
		TokenEndpoint string   `json:"token_endpoint"`
		AuthMethods   []string `json:"token_endpoint_auth_methods_supported"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&conf); err != nil {
		return "", fmt.Errorf("read the SMART configuration: %w", err)
	}
	ep, err := resolve(u, conf.TokenEndpoint)
	if err != nil {
		return "", fmt.Errorf("the SMART configuration names no usable token endpoint: %w", err)
	}
	return ep, nil
}

// A TokenError is the token endpoint's refusal (RFC 6749 section 5.2).
type TokenError struct {
	Status      int
	Code        string
	Description string
}

func (e *TokenError) Error() string {
	msg := fmt.Sprintf("the token endpoint refused (%d): %s", e.Status, e.Code)
	if e.Description != "" {
		msg += ": " + e.Description
	}
	return msg + " (check the client id, and that the key's JWKS is registered with the server)"
}

// request asks the token endpoint for a token with a fresh signed
// assertion (a new jti, five minutes at most, as the profile requires).
func (ts *tokenSource) request(ctx context.Context, scope string) (string, time.Duration, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: ts.auth.Key.Alg, Key: ts.auth.Key.Signer},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", ts.auth.Key.ID))
	if err != nil {
		return "", 0, fmt.Errorf("sign the client assertion: %w", err)
	}
	var jti [16]byte
	rand.Read(jti[:])
	now := time.Now()
	assertion, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: ts.auth.ClientID, Subject: ts.auth.ClientID, Audience: jwt.Audience{ts.endpoint},
		Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute)), IssuedAt: jwt.NewNumericDate(now), ID: hex.EncodeToString(jti[:]),
	}).Serialize()
	if err != nil {
		return "", 0, fmt.Errorf("sign the client assertion: %w", err)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {scope},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := ts.client.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("ask for an access token: %w", redactURL(err))
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil {
		return "", 0, fmt.Errorf("ask for an access token: the answer (%d) is not JSON", resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK || body.AccessToken == "" {
		if len(body.Description) > 200 {
			body.Description = body.Description[:200]
		}
		return "", 0, &TokenError{Status: resp.StatusCode, Code: body.Error, Description: body.Description}
	}
	if !strings.EqualFold(body.TokenType, "bearer") {
		return "", 0, fmt.Errorf("the token endpoint gave a %q token, not a bearer one", body.TokenType)
	}
	ttl := time.Duration(body.ExpiresIn) * time.Second
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	return body.AccessToken, ttl, nil
}
