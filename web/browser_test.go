package web

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// The browser tests drive Debian's chromium (make browser-deps) with
// the keyboard alone: Tab to a field, type, Enter; no click, no script
// that fills a form. Each page is checked with axe-core (make web-deps)
// for serious or critical WCAG 2.2 AA violations. With HUB_SCREENSHOTS=DIR
// (make screenshots) each main page is saved as a PNG.

// chrome starts a headless chromium; the test fails when there is none.
func chrome(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("no chromium on PATH: install Debian's (make browser-deps)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 1000), chromedp.Flag("disable-gpu", true),
		// The machine's network is closed: no background connections.
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true))
	actx, cancel := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// axeSource is axe-core, injected into pages under test.
func axeSource(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("node_modules", "axe-core", "axe.min.js"))
	if err != nil {
		t.Fatalf("axe-core: %v (run make web-deps)", err)
	}
	return string(b)
}

// A tab is one browser tab of a keyboard-only user.
type tab struct {
	t    *testing.T
	ctx  context.Context
	base string
	axe  string
}

func (x *hub) tab(t *testing.T, ctx context.Context) *tab {
	return &tab{t: t, ctx: ctx, base: x.srv.URL, axe: axeSource(t)}
}

// run runs steps, each bounded to 30 s.
func (b *tab) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// value runs one action for its value.
func value[T any](b *tab, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	return v
}

// open goes to a page (as typing its address would) and checks it.
func (b *tab) open(path string) {
	b.t.Helper()
	b.run("open "+path, chromedp.Navigate(b.base+path), chromedp.WaitReady(chromedp.CSS("body")))
	b.check()
}

// focusOn presses Tab until the focused element matches sel.
func (b *tab) focusOn(sel string) {
	b.t.Helper()
	for range 120 {
		if value(b, "focus", chromedp.Evaluate[bool](fmt.Sprintf(`!!document.activeElement && document.activeElement.matches(%q)`, sel))) {
			return
		}
		b.run("tab", chromedp.KeyEvent(kb.Tab))
	}
	b.t.Fatalf("Tab never reached %s", sel)
}

// fill tabs to a field, clears it with the keyboard and types text.
func (b *tab) fill(sel, text string) {
	b.t.Helper()
	b.focusOn(sel)
	b.run("clear "+sel, chromedp.KeyEvent(kb.End), clearKeys(), chromedp.KeyEvent(text))
}

func clearKeys() chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for range 40 {
			if _, err := chromedp.KeyEvent(kb.Backspace)(ctx, t); err != nil {
				return err
			}
		}
		return nil
	})
}

// press tabs to sel and presses Enter (a button, a link) or Space (a
// checkbox or radio), then waits for the page to be ready.
func (b *tab) press(sel, key string) {
	b.t.Helper()
	b.focusOn(sel)
	b.run("press "+sel, chromedp.KeyEvent(key))
}

// submit presses Enter on sel and waits for the next page to load and
// show then.
func (b *tab) submit(sel, then string) {
	b.t.Helper()
	value(b, "mark the page", chromedp.Evaluate[bool](`window.hubOldPage = true`))
	b.press(sel, kb.Enter)
	for i := 0; ; i++ {
		if value(b, "wait for the next page", chromedp.Evaluate[bool](`!window.hubOldPage && document.readyState === "complete"`)) {
			break
		}
		if i == 200 {
			b.t.Fatalf("Enter on %s loaded no new page", sel)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.run("wait for "+then, chromedp.WaitVisible(chromedp.CSS(then)))
	b.check()
}

func (b *tab) text(sel string) string {
	b.t.Helper()
	return value(b, "text of "+sel, chromedp.Text(chromedp.CSS(sel)))
}

// check runs axe-core on the page: no serious or critical violation of
// WCAG 2.2 A and AA.
func (b *tab) check() {
	b.t.Helper()
	url := value(b, "url", chromedp.Location())
	for _, v := range b.violations() {
		b.t.Errorf("%s: accessibility: %v", url, v)
	}
}

// violations are axe-core's serious and critical findings on the page.
func (b *tab) violations() []map[string]any {
	b.t.Helper()
	value(b, "inject axe", chromedp.Evaluate[any](b.axe+";0"))
	out := value(b, "axe", chromedp.Evaluate[string](`axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]}})
		.then(r => JSON.stringify(r.violations.filter(v => v.impact === "serious" || v.impact === "critical").map(v => ({id: v.id, help: v.help, nodes: v.nodes.map(n => n.target.join(" "))}))))`,
		chromedp.EvalAwaitPromise))
	var violations []map[string]any
	if err := json.Unmarshal([]byte(out), &violations); err != nil {
		b.t.Fatalf("axe: %v", err)
	}
	return violations
}

// shot saves the page as DIR/name.png when HUB_SCREENSHOTS=DIR.
func (b *tab) shot(name string) {
	dir := os.Getenv("HUB_SCREENSHOTS")
	if dir == "" {
		return
	}
	png := value(b, "screenshot", chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// signIn signs in with the keyboard.
func (b *tab) signIn(token string) {
	b.t.Helper()
	b.open("/sign-in")
	b.fill("#token", token)
	b.submit("#token", "a[href='/projects']")
}

func (b *tab) signOut() {
	b.t.Helper()
	b.submit(".nhsuk-header__account-button", "a[href='/sign-in']")
}

// A researcher signs in, asks for data access; two committee members
// approve with conditions; the researcher builds a cohort, sees its cost,
// runs it and sees the chart; the public register shows the project and
// the opt-out figures. Every step with the keyboard, every page checked by
// axe-core.
func TestBrowser(t *testing.T) {
	x := newHub(t)
	ctx := chrome(t)
	b := x.tab(t, ctx)

	b.open("/")
	b.shot("home")
	b.signIn(x.tok["rosa"])
	b.open("/requests/new")
	b.fill("#title", "Diabetes control in the region")
	b.fill("#project", "t2d-control")
	b.fill("#purpose", "Measure how many women aged 40 to 80 with type 2 diabetes have a raised HbA1c.")
	b.fill("#lay_summary", "How well is type 2 diabetes controlled among women in the region?")
	b.press("#datasets-0", " ")
	b.fill("#epsilon", "3")
	b.fill("#max_query_epsilon", "1")
	b.fill("#duration_days", "180")
	b.press("#legal-basis-0", " ")
	b.shot("new-request")
	b.submit("#researchers", "h1")
	if got := b.text("h1"); got != "Diabetes control in the region" {
		t.Fatalf("after submitting the request: %q", got)
	}
	where := value(b, "url", chromedp.Location())
	b.signOut()

	for _, who := range []string{"dina", "dev"} {
		b.signIn(x.tok[who])
		b.open("/requests")
		if who == "dina" {
			b.shot("dac-queue")
		}
		b.submit("a[href='"+strings.TrimPrefix(where, x.srv.URL)+"']", "#conditions")
		if !strings.Contains(b.text(".nhsuk-inset-text"), "What ε 3 means") {
			t.Errorf("%s does not see what ε means", who)
		}
		b.fill("#epsilon", "2")
		b.fill("#suppress_below", "15")
		b.fill("#conditions", "Release rates only; no count under 50 in a publication.")
		b.fill("#reason", "Sound design; proportionate budget.")
		if who == "dina" {
			b.shot("dac-request")
		}
		b.submit("#approve-button", "h1")
		b.signOut()
	}
	p, err := x.gov.Project("t2d-control")
	if err != nil || p.Rules.SuppressBelow != 15 || len(p.Conditions) != 1 {
		t.Fatalf("after two approvals: %+v %v", p, err)
	}

	b.signIn(x.tok["rosa"])
	b.open("/projects/t2d-control")
	b.submit("a[href='/projects/t2d-control/query']", "#index_date")
	b.fill("#index_date", "2024-01-01")
	b.press("#sex", "f") // type-ahead in the select: female
	b.fill("#age_min", "40")
	b.fill("#age_max", "80")
	b.press("#by", "a") // age_band
	b.fill("#epsilon", "0.5")
	b.submit("button[value='preview']", "#cost")
	cost := b.text("#cost")
	if !strings.Contains(cost, "ε 0.5") || !strings.Contains(cost, "95% interval") {
		t.Errorf("the cost: %q", cost)
	}
	b.shot("builder")
	b.submit("button[value='run']", ".hub-chart")
	if cells := b.text("table caption"); cells == "" {
		t.Errorf("no table beside the chart")
	}
	b.shot("answer")
	if bud, _ := x.svc.Budget("t2d-control"); bud.Queries != 1 {
		t.Errorf("budget after one run: %+v", bud)
	}
	b.signOut()

	b.open("/register")
	reg := b.text("main")
	if !strings.Contains(reg, "How well is type 2 diabetes controlled among women") || !strings.Contains(reg, "Approved with conditions") ||
		!strings.Contains(reg, "National Data Opt-out") || !strings.Contains(reg, "ε 0.5 spent of 2 granted") {
		t.Errorf("the register: %s", reg)
	}
	b.shot("register")
	b.open("/catalog")
	b.submit("a[href='/catalog/gp/1']", "caption")

	// The check can fail: an unlabelled field and an image without text
	// are found.
	value(b, "break the page", chromedp.Evaluate[any](`document.querySelector("main").insertAdjacentHTML("beforeend", '<input type="text"><img src="/static/nhsuk/assets/images/favicon.svg">'); 0`))
	if v := b.violations(); len(v) < 2 {
		t.Errorf("axe found %d violations on a page with an unlabelled field and an image without alt text", len(v))
	}
}
