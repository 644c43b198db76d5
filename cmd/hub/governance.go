package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nhs-hub/hub/api"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
)

// hostPrincipal is who a command run on the server's host acts as.
func hostPrincipal() *governance.Principal {
	login := "unknown"
	if u, err := user.Current(); err == nil {
		login = u.Username
	}
	return governance.Host(login)
}

// openGovernance opens the state folder's governance store.
func openGovernance(c *cli.Context) (*governance.Store, error) {
	key, err := auditKey(c)
	if err != nil {
		return nil, err
	}
	return governance.Open(c.String("state"), governance.Options{Quorum: c.Int("quorum"), Logger: logger(c), AuditKey: key})
}

const auditKeyEnv = "HUB_AUDIT_KEY_FILE"

func auditKeyFlag() cli.Flag {
	return &cli.StringFlag{Name: "audit-key-file", EnvVars: []string{auditKeyEnv},
		Usage: "the key of a keyed audit chain, kept outside the state folder (`hub audit keygen`); every command on this state folder needs it, through this flag or $" + auditKeyEnv}
}

// auditKey is the audit key named by --audit-key-file, or by the
// environment for commands without the flag; nil if none is.
func auditKey(c *cli.Context) ([]byte, error) {
	path := c.String("audit-key-file")
	if path == "" {
		path = os.Getenv(auditKeyEnv)
	}
	if path == "" {
		return nil, nil
	}
	return governance.LoadAuditKey(path, c.String("state"))
}

// args insists on exactly n arguments after the flags. urfave/cli v2 stops
// reading flags at the first argument, so a flag after it would be
// silently ignored: say so instead.
func args(c *cli.Context, n int) error {
	for _, a := range c.Args().Slice() {
		if strings.HasPrefix(a, "-") {
			return usageError{fmt.Errorf("put flags before the arguments: usage: %s [flags] %s", c.Command.HelpName, c.Command.ArgsUsage)}
		}
	}
	if c.Args().Len() != n {
		return usageError{fmt.Errorf("usage: %s [flags] %s", c.Command.HelpName, c.Command.ArgsUsage)}
	}
	return nil
}

func tokenDaysFlag() cli.Flag {
	return &cli.IntFlag{Name: "token-days", Value: 90, Usage: "days until the token expires"}
}

func userCommand() *cli.Command {
	return &cli.Command{
		Name:  "user",
		Usage: "manage users, roles and tokens (on the server's host, as admin)",
		Description: "These commands act on the state folder directly, as the admin host:<login>, and work\n" +
			"while the server runs. Tokens are printed once, on stdout; only their hashes are kept.\n\n" +
			"Example: hub user add rosa --role researcher > rosa.token",
		Subcommands: []*cli.Command{
			{
				Name: "add", Usage: "add a user with one or more roles and print their first token", ArgsUsage: "NAME",
				Flags: []cli.Flag{stateFlag(), tokenDaysFlag(), jsonFlag(),
					&cli.StringSliceFlag{Name: "role", Required: true, Usage: "researcher, dac, analyst or admin (repeat for several)"}},
				Action: func(c *cli.Context) error {
					if err := args(c, 1); err != nil {
						return err
					}
					var roles []governance.Role
					for _, r := range c.StringSlice("role") {
						for _, part := range strings.Split(r, ",") {
							role, err := governance.ParseRole(part)
							if err != nil {
								return err
							}
							roles = append(roles, role)
						}
					}
					gov, err := openGovernance(c)
					if err != nil {
						return err
					}
					defer gov.Close()
					ttl, err := governance.TokenTTL(c.Int("token-days"))
					if err != nil {
						return usageError{err}
					}
					tok, err := gov.AddUser(hostPrincipal(), c.Args().First(), roles, ttl)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.ErrWriter, "user %s added (%s); their token, shown once, follows on stdout\n", c.Args().First(), c.StringSlice("role"))
					return printToken(c, tok)
				},
			},
			{
				Name: "token", Usage: "issue a user a new token (printed once)", ArgsUsage: "NAME",
				Flags: []cli.Flag{stateFlag(), tokenDaysFlag(), jsonFlag()},
				Action: func(c *cli.Context) error {
					if err := args(c, 1); err != nil {
						return err
					}
					gov, err := openGovernance(c)
					if err != nil {
						return err
					}
					defer gov.Close()
					ttl, err := governance.TokenTTL(c.Int("token-days"))
					if err != nil {
						return usageError{err}
					}
					tok, err := gov.IssueToken(hostPrincipal(), c.Args().First(), ttl)
					if err != nil {
						return err
					}
					return printToken(c, tok)
				},
			},
			{
				Name: "revoke", Usage: "revoke a user's tokens (all, or those named by --id)", ArgsUsage: "NAME",
				Flags: []cli.Flag{stateFlag(), jsonFlag(), &cli.StringSliceFlag{Name: "id", Usage: "a token ID from `hub user list`"}},
				Action: func(c *cli.Context) error {
					if err := args(c, 1); err != nil {
						return err
					}
					gov, err := openGovernance(c)
					if err != nil {
						return err
					}
					defer gov.Close()
					ids, err := gov.RevokeTokens(hostPrincipal(), c.Args().First(), c.StringSlice("id"))
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return writeJSON(c.App.Writer, map[string]any{"user": c.Args().First(), "revoked": ids})
					}
					fmt.Fprintf(c.App.Writer, "revoked %s's tokens %s\n", c.Args().First(), strings.Join(ids, ", "))
					return nil
				},
			},
			{
				Name: "list", Usage: "list users, their roles and tokens (IDs, never the tokens)",
				Flags: []cli.Flag{stateFlag(), jsonFlag()},
				Action: func(c *cli.Context) error {
					gov, err := openGovernance(c)
					if err != nil {
						return err
					}
					defer gov.Close()
					us, err := gov.Users(hostPrincipal())
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return writeJSON(c.App.Writer, us)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 2, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "user\troles\ttokens")
					for _, u := range us {
						var ts []string
						for _, t := range u.Tokens {
							state := "expires " + t.Expires.Format(time.DateOnly)
							if t.Revoked != nil {
								state = "revoked"
							}
							ts = append(ts, t.ID+" ("+state+")")
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\n", u.Name, joinRoles(u.Roles), strings.Join(ts, ", "))
					}
					return tw.Flush()
				},
			},
		},
	}
}

// printToken prints a new token: alone on a line (for `> name.token`), or
// with --json as {"user", "token"}.
func printToken(c *cli.Context, tok string) error {
	if c.Bool("json") {
		return writeJSON(c.App.Writer, map[string]string{"user": c.Args().First(), "token": tok})
	}
	_, err := fmt.Fprintln(c.App.Writer, tok)
	return err
}

func joinRoles(rs []governance.Role) string {
	var s []string
	for _, r := range rs {
		s = append(s, string(r))
	}
	return strings.Join(s, ",")
}

func jsonFlag() cli.Flag { return &cli.BoolFlag{Name: "json", Usage: "print JSON"} }

// apiCall runs one API call and prints the result: JSON with --json,
// else through text.
func apiCall[T any](c *cli.Context, method, path string, body any, text func(io.Writer, T)) error {
	cl, err := client(c)
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := cl.Do(c.Context, method, path, body, &raw); err != nil {
		return err
	}
	if c.Bool("json") {
		_, err := c.App.Writer.Write(raw)
		return err
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	text(c.App.Writer, v)
	return nil
}

// showRequest prints a request in full.
func showRequest(w io.Writer, r governance.Request) { printRequest(w, &r, true) }

// onRequest is a subcommand that calls one request's endpoint: GET
// /v1/requests/ID when action is "", else POST /v1/requests/ID/action with
// the body that body builds from the flags (nil: none). It prints the
// request as it then stands.
func onRequest(name, usage, action string, flags []cli.Flag, body func(*cli.Context) any) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: "ID", Flags: append(serverFlags(), flags...),
		Action: func(c *cli.Context) error {
			if err := args(c, 1); err != nil {
				return err
			}
			method, path := "GET", "/v1/requests/"+url.PathEscape(c.Args().First())
			var in any
			if action != "" {
				method, path = "POST", path+"/"+action
				if body != nil {
					in = body(c)
				}
			}
			return apiCall(c, method, path, in, showRequest)
		},
	}
}

func requestCommand() *cli.Command {
	return &cli.Command{
		Name:  "request",
		Usage: "data access requests: submit, list, show, withdraw, amend (researchers)",
		Description: "A request asks the DAC for a project: datasets, a privacy budget, a purpose and a legal\n" +
			"basis. See docs/governance.md and docs/examples/request.json.\n\n" +
			"Example: hub request submit --token-file rosa.token --file docs/examples/request.json",
		Subcommands: []*cli.Command{
			{
				Name: "submit", Usage: "submit a request from a JSON file (or a draft by its ID)", ArgsUsage: "[DRAFT-ID]",
				Flags: append(serverFlags(), &cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "the request (JSON), - for stdin"},
					&cli.BoolFlag{Name: "draft", Usage: "keep it as a draft; submit it later with `hub request submit ID`"}),
				Action: func(c *cli.Context) error {
					if c.String("file") == "" {
						if err := args(c, 1); err != nil {
							return usageError{errors.New("give --file request.json, or the ID of a draft to submit")}
						}
						return apiCall(c, "POST", "/v1/requests/"+url.PathEscape(c.Args().First())+"/submit", nil, showRequest)
					}
					body, err := readFileOrStdin(c.String("file"), 1<<20)
					if err != nil {
						return err
					}
					path := "/v1/requests"
					if c.Bool("draft") {
						path += "?draft=true"
					}
					return apiCall(c, "POST", path, body, showRequest)
				},
			},
			{
				Name: "list", Usage: "list your requests (all of them for the DAC and admins)",
				Flags: append(serverFlags(), &cli.StringFlag{Name: "in-state", Usage: "only requests in this state, e.g. approved"}),
				Action: func(c *cli.Context) error {
					path := "/v1/requests"
					if s := c.String("in-state"); s != "" {
						path += "?state=" + url.QueryEscape(s)
					}
					return apiCall(c, "GET", path, nil, printRequests)
				},
			},
			onRequest("show", "show a request with its votes, decision and amendments", "", nil, nil),
			onRequest("withdraw", "withdraw your request; an approved project stops answering", "withdraw", nil, nil),
			onRequest("amend", "ask the DAC for a new total budget or more time on an approved request", "amend", []cli.Flag{
				&cli.Float64Flag{Name: "epsilon", Usage: "the new total ε (default: unchanged)"},
				&cli.Float64Flag{Name: "delta", Usage: "the new total δ (default: unchanged)"},
				&cli.Float64Flag{Name: "max-query-epsilon", Usage: "the new per-query cap (default: unchanged)"},
				&cli.IntFlag{Name: "extend-days", Usage: "days to add to the expiry"},
				&cli.StringFlag{Name: "reason", Required: true, Usage: "why"},
			}, func(c *cli.Context) any {
				return governance.AmendmentSpec{Epsilon: c.Float64("epsilon"), Delta: c.Float64("delta"),
					MaxQueryEpsilon: c.Float64("max-query-epsilon"), ExtendDays: c.Int("extend-days"), Reason: c.String("reason")}
			}),
		},
	}
}

func dacCommand() *cli.Command {
	return &cli.Command{
		Name:  "dac",
		Usage: "the data access committee: list, review, approve and reject requests",
		Description: "Approval needs a quorum of distinct DAC members (the server's --quorum, default 2); each\n" +
			"may grant less than was asked. One member's rejection rejects. Nobody reviews a request\n" +
			"they submitted or are named on.\n\n" +
			"Example: hub dac approve --token-file dina.token --reason \"sound design\" --epsilon 3 req-1",
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "list requests waiting for the DAC (--all for every request)",
				Flags: append(serverFlags(), &cli.BoolFlag{Name: "all", Usage: "every request, decided or not"}),
				Action: func(c *cli.Context) error {
					path := "/v1/requests?open=true"
					if c.Bool("all") {
						path = "/v1/requests"
					}
					return apiCall(c, "GET", path, nil, printRequests)
				},
			},
			onRequest("review", "take a submitted request into review and show it", "review", nil, nil),
			onRequest("approve", "approve a request (or its pending amendment), granting at most what was asked", "approve", []cli.Flag{
				&cli.StringFlag{Name: "reason", Required: true, Usage: "the reason for the decision"},
				&cli.StringFlag{Name: "conditions", Usage: "conditions of the approval"},
				&cli.Float64Flag{Name: "epsilon", Usage: "ε to grant (default: as asked)"},
				&cli.Float64Flag{Name: "delta", Usage: "δ to grant (default: as asked)"},
				&cli.Float64Flag{Name: "max-query-epsilon", Usage: "per-query cap to grant (default: as asked)"},
				&cli.StringFlag{Name: "expires", Usage: "expiry date, YYYY-MM-DD (default: the asked duration from the decision)"},
				&cli.IntFlag{Name: "suppress-below", Usage: "release rule: counts under it are suppressed (default 10, the least)"},
				&cli.IntFlag{Name: "round-to", Usage: "release rule: counts are rounded to a multiple of 1 (none), 5 (default) or 10"},
				&cli.IntFlag{Name: "min-cohort", Usage: "release rule: sums, means and quantiles of fewer patients are suppressed (default 10)"},
			}, func(c *cli.Context) any {
				a := api.Approval{Epsilon: c.Float64("epsilon"), Delta: c.Float64("delta"), MaxQueryEpsilon: c.Float64("max-query-epsilon"),
					Expires: c.String("expires"), Reason: c.String("reason"), Conditions: c.String("conditions")}
				if c.IsSet("suppress-below") || c.IsSet("round-to") || c.IsSet("min-cohort") {
					a.ReleaseRules = &governance.ReleaseRules{SuppressBelow: c.Int("suppress-below"), RoundTo: c.Int("round-to"), MinCohort: c.Int("min-cohort")}
				}
				return a
			}),
			onRequest("reject", "reject a request (or its pending amendment) with a reason", "reject", []cli.Flag{
				&cli.StringFlag{Name: "reason", Required: true, Usage: "the reason, shown to the researcher"},
			}, func(c *cli.Context) any { return map[string]string{"reason": c.String("reason")} }),
		},
	}
}

func auditCommand() *cli.Command {
	filters := []string{"actor", "action", "outcome", "project", "request", "user", "dataset", "since", "until", "after", "limit"}
	var listFlags []cli.Flag
	for _, f := range filters {
		listFlags = append(listFlags, &cli.StringFlag{Name: f, Usage: "only entries with this " + f})
	}
	return &cli.Command{
		Name:  "audit",
		Usage: "the hash-chained audit log: list entries (DAC, admins) and verify the chain",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list audit entries over the API, oldest first",
				Description: "Filters: --action (e.g. query, request.approve, auth), --outcome ok|refused, --since and\n" +
					"--until (YYYY-MM-DD), --after SEQ, --limit N (at most 1000).\n\n" +
					"Example: hub audit list --token-file dina.token --action query --project t2d-audit",
				Flags: append(serverFlags(), listFlags...),
				Action: func(c *cli.Context) error {
					q := url.Values{}
					for _, f := range filters {
						if v := c.String(f); v != "" {
							q.Set(f, v)
						}
					}
					return apiCall(c, "GET", "/v1/audit?"+q.Encode(), nil, printAudit)
				},
			},
			{
				Name:      "keygen",
				Usage:     "make a key for a keyed audit chain (HMAC-SHA256), for a new state folder",
				ArgsUsage: " ",
				Description: "A keyed chain cannot be relinked by someone who can write the state folder but not read\n" +
					"the key: keep the key elsewhere (another mount, a secret store) and give it to every\n" +
					"command on the folder with --audit-key-file or $" + auditKeyEnv + ". A log is keyed from its\n" +
					"first entry or not at all, so start the server with the key on an empty state folder.\n" +
					"Lose the key and the log no longer verifies: back it up.\n\n" +
					"Example: hub audit keygen --out /etc/hub/audit.key",
				Flags: []cli.Flag{&cli.StringFlag{Name: "out", Required: true, Usage: "the key file to create (mode 0600; never overwritten)"}},
				Action: func(c *cli.Context) error {
					if err := args(c, 0); err != nil {
						return err
					}
					if err := governance.NewAuditKey(c.String("out")); err != nil {
						return err
					}
					fmt.Fprintf(c.App.ErrWriter, "wrote %s; start the server with --audit-key-file %s on an empty state folder\n", c.String("out"), c.String("out"))
					return nil
				},
			},
			{
				Name:  "verify",
				Usage: "verify the audit chain in a state folder: every link, every hash, the head file, and every budget ledger against it",
				Description: "Exits 0 and prints the head (SEQ:HASH) if the chain is intact; exits 1 naming the first\n" +
					"bad entry if any entry was edited, removed or reordered. Keep the printed head somewhere\n" +
					"else; --expect-head SEQ:HASH later proves nothing up to it has changed.\n\n" +
					"Example: hub audit verify --state ./state",
				Flags: append([]cli.Flag{stateFlag(), auditKeyFlag(), jsonFlag(),
					&cli.StringFlag{Name: "expect-head", Usage: "a head printed earlier, SEQ:HASH, that the log must still contain"},
					&cli.StringFlag{Name: "lake", EnvVars: []string{"HUB_LAKE"}, Usage: "also check the log against every checkpoint `hub serve` wrote to this lake (audit-checkpoints/)"},
				}, s3Flags()...),
				Action: func(c *cli.Context) error {
					var expect *governance.Head
					if h := c.String("expect-head"); h != "" {
						seq, hash, ok := strings.Cut(h, ":")
						n, err := strconv.ParseInt(seq, 10, 64)
						if !ok || err != nil || len(hash) != 64 {
							return errors.New("--expect-head takes SEQ:HASH as printed by an earlier `hub audit verify`")
						}
						expect = &governance.Head{Seq: n, Hash: hash}
					}
					key, err := auditKey(c)
					if err != nil {
						return err
					}
					var heads []governance.Head
					if expect != nil {
						heads = append(heads, *expect)
					}
					checkpoints := 0
					if c.String("lake") != "" {
						lake, err := openLake(c)
						if err != nil {
							return err
						}
						cps, err := governance.Checkpoints(c.Context, lake.Store())
						if err != nil {
							return err
						}
						checkpoints = len(cps)
						heads = append(heads, cps...)
					}
					res, err := governance.VerifyHeads(c.String("state"), key, heads)
					if err != nil {
						return err
					}
					if err := checkLedgers(c.String("state"), res); err != nil {
						return err
					}
					if c.Bool("json") {
						return writeJSON(c.App.Writer, res)
					}
					fmt.Fprintf(c.App.Writer, "audit log intact: %d entries; head %d:%s\n", res.Entries, res.Head.Seq, res.Head.Hash)
					fmt.Fprintf(c.App.Writer, "budget ledgers agree with it: %d ledgers, %d charges\n", res.Ledgers, res.LedgerCharges)
					if c.String("lake") != "" {
						fmt.Fprintf(c.App.Writer, "it contains all %d checkpoints in the lake\n", checkpoints)
					}
					return nil
				},
			},
		},
	}
}

// checkLedgers cross-checks every budget ledger in the state folder, and
// every project the audit log charged, against the verified chain.
func checkLedgers(state string, res *governance.VerifyResult) error {
	files, err := filepath.Glob(filepath.Join(state, "ledger", "*.jsonl"))
	if err != nil {
		return err
	}
	projects := map[string]bool{}
	for _, f := range files {
		projects[strings.TrimSuffix(filepath.Base(f), ".jsonl")] = true
	}
	for _, p := range res.ChargedProjects() {
		projects[p] = true
	}
	var errs []error
	for p := range projects {
		charges, err := cohorts.ReadLedger(filepath.Join(state, "ledger", p+".jsonl"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		if err == nil {
			res.Ledgers++
			res.LedgerCharges += len(charges)
		}
		errs = append(errs, res.CheckLedger(p, charges))
	}
	return errors.Join(errs...)
}

func readFileOrStdin(name string, limit int64) ([]byte, error) {
	var r io.Reader
	if name == "-" {
		r = os.Stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return b, err
}

func eps(u int64) string   { return strconv.FormatFloat(float64(u)*governance.EpsilonUnit, 'g', 6, 64) }
func delta(u int64) string { return strconv.FormatFloat(float64(u)*governance.DeltaUnit, 'g', 3, 64) }

func printRequests(w io.Writer, rs []governance.Request) {
	if len(rs) == 0 {
		fmt.Fprintln(w, "no requests")
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "id\tstate\tproject\tsubmitter\tε asked\tgranted\ttitle")
	for _, r := range rs {
		granted := ""
		if d := r.Decision; d != nil && d.Outcome != governance.Rejected {
			granted = "ε " + eps(d.EpsilonU) + " until " + d.Expires.Format(time.DateOnly)
		}
		state := string(r.State)
		if n := len(r.Amendments); n > 0 && r.Amendments[n-1].State == "pending" {
			state += " (amendment pending)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%g\t%s\t%s\n", r.ID, state, r.Project, r.Submitter, r.Epsilon, granted, r.Title)
	}
	tw.Flush()
}

func printRequest(w io.Writer, r *governance.Request, full bool) {
	fmt.Fprintf(w, "%s  %s  [%s]\n", r.ID, r.Title, r.State)
	fmt.Fprintf(w, "  project %s · datasets %s · submitted by %s", r.Project, strings.Join(r.Datasets, ", "), r.Submitter)
	if len(r.Researchers) > 0 {
		fmt.Fprintf(w, " with %s", strings.Join(r.Researchers, ", "))
	}
	optOut := "does not apply"
	if r.NationalOptOutApplies != nil && *r.NationalOptOutApplies {
		optOut = "applies"
	}
	fmt.Fprintf(w, "\n  asks ε %g (per query %g), δ %g for %d days · legal basis %s · National Data Opt-out %s\n",
		r.Epsilon, r.MaxQueryEpsilon, r.Delta, r.DurationDays, r.LegalBasis, optOut)
	if full {
		fmt.Fprintf(w, "  purpose: %s\n  lay summary: %s\n", r.Purpose, r.LaySummary)
	}
	printVotes(w, "  ", r.Votes)
	if d := r.Decision; d != nil {
		printDecision(w, "  ", d)
	}
	for _, a := range r.Amendments {
		fmt.Fprintf(w, "  amendment %d [%s]: ε %g, δ %g, per query %g, +%d days: %s\n", a.N, a.State, a.Epsilon, a.Delta, a.MaxQueryEpsilon, a.ExtendDays, a.Reason)
		printVotes(w, "    ", a.Votes)
	}
}

func printVotes(w io.Writer, indent string, vs []governance.Vote) {
	for _, v := range vs {
		verb := "rejected"
		if v.Approve {
			verb = "approved, granting ε " + eps(v.EpsilonU)
		}
		fmt.Fprintf(w, "%s%s %s %s: %s", indent, v.Time.Format(time.DateOnly), v.Reviewer, verb, v.Reason)
		if v.Conditions != "" {
			fmt.Fprintf(w, " (conditions: %s)", v.Conditions)
		}
		fmt.Fprintln(w)
	}
}

func printDecision(w io.Writer, indent string, d *governance.Decision) {
	if d.Outcome == governance.Rejected {
		fmt.Fprintf(w, "%sdecision: rejected by %s on %s\n", indent, strings.Join(d.DecidedBy, ", "), d.Time.Format(time.DateOnly))
		return
	}
	fmt.Fprintf(w, "%sdecision: %s by %s on %s: ε %s (per query %s), δ %s, until %s\n", indent, d.Outcome,
		strings.Join(d.DecidedBy, " and "), d.Time.Format(time.DateOnly), eps(d.EpsilonU), eps(d.MaxQueryU), delta(d.DeltaU),
		d.Expires.Format(time.DateOnly))
	for _, c := range d.Conditions {
		fmt.Fprintf(w, "%scondition: %s\n", indent, c)
	}
}

func printAudit(w io.Writer, es []governance.Entry) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "seq\ttime\tactor\taction\toutcome\ton\tdetail")
	for _, e := range es {
		var on []string
		for _, s := range []string{e.Request, e.Project, e.User} {
			if s != "" {
				on = append(on, s)
			}
		}
		if e.Dataset != "" {
			on = append(on, fmt.Sprintf("%s@%d", e.Dataset, e.Version))
		}
		detail := e.Reason
		if e.EpsilonU > 0 {
			detail = strings.TrimSpace("ε " + eps(e.EpsilonU) + " " + detail)
		}
		if e.QuerySHA256 != "" {
			detail += " query " + e.QuerySHA256[:12]
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.DateTime), e.Actor, e.Action, e.Outcome,
			strings.Join(on, " "), detail)
	}
	tw.Flush()
}
