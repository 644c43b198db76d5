package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nhs-hub/hub/cohorts"
)

// A Client calls the hub's HTTP API with a user's token.
type Client struct {
	// Base is the server's URL, e.g. http://127.0.0.1:8080.
	Base  string
	Token string
	HTTP  *http.Client
}

// An APIError is an error the server answered with.
type APIError struct {
	Status int
	Msg    string
}

func (e *APIError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Msg, e.Status) }

// Do calls an endpoint with a JSON body (nil for none; []byte is sent as
// is) and decodes the answer into out (a *json.RawMessage keeps it raw).
func (c *Client) Do(ctx context.Context, method, path string, in any, out any) error {
	var body []byte
	switch v := in.(type) {
	case nil:
	case []byte:
		body = v
	default:
		var err error
		if body, err = json.Marshal(v); err != nil {
			return err
		}
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Base, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("reach the hub server at %s: %w (is `hub serve` running? set --server or HUB_SERVER)", c.Base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return &APIError{Status: resp.StatusCode, Msg: e.Error}
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = data
		return nil
	}
	return json.Unmarshal(data, out)
}

// Query posts a query (JSON) for a project.
func (c *Client) Query(ctx context.Context, project string, query []byte) (*cohorts.Answer, json.RawMessage, error) {
	var raw json.RawMessage
	if err := c.Do(ctx, "POST", "/v1/projects/"+url.PathEscape(project)+"/queries", query, &raw); err != nil {
		return nil, nil, err
	}
	var a cohorts.Answer
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, nil, err
	}
	return &a, raw, nil
}

// Budget fetches a project's budget.
func (c *Client) Budget(ctx context.Context, project string) (*cohorts.Budget, error) {
	var b cohorts.Budget
	return &b, c.Do(ctx, "GET", "/v1/projects/"+url.PathEscape(project)+"/budget", nil, &b)
}

// Wait polls /healthz until the server answers or d passes.
func (c *Client) Wait(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(c.Base, "/")+"/healthz", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no hub server answered at %s within %s: start one with `hub serve`", c.Base, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
