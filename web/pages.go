package web

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-hub/hub/api"
	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
)

func (a *app) home(w http.ResponseWriter, r *http.Request, v *view) error {
	v.Title, v.Nav = "Home", "home"
	a.render(w, "home", v)
	return nil
}

// The public register.

type registerProject struct {
	governance.RegisterEntry
	Spent float64
}

type registerDataset struct {
	Name, Created, OptOutDate string
	Version                   int
	Patients                  int64 // rounded to 10
	NDOP, Dissent             int64 // rounded to 5
	Tables                    []string
}

func (a *app) register(w http.ResponseWriter, r *http.Request, v *view) error {
	entries, err := a.Gov.Register()
	if err != nil {
		return err
	}
	var projects []registerProject
	for _, e := range entries {
		eps, _, err := a.Svc.Spent(e.Project)
		if err != nil {
			return err
		}
		projects = append(projects, registerProject{e, float64(eps) * governance.EpsilonUnit})
	}
	var datasets []registerDataset
	names, err := a.Lake.Datasets(r.Context())
	if err != nil {
		return err
	}
	for _, n := range names {
		vs, err := a.Lake.Versions(r.Context(), n)
		if err != nil {
			return err
		}
		m, err := a.Lake.Manifest(r.Context(), n, vs[len(vs)-1])
		if err != nil {
			return err
		}
		d := registerDataset{Name: n, Version: m.Version, Created: m.Created.Format(time.DateOnly), OptOutDate: m.Provenance.OptOutDate}
		if t := m.Tables["patients"]; t != nil {
			d.Patients = catalog.RoundCount(t.Rows)
		}
		d.NDOP, d.Dissent = withheld(m.Reports["ingest"])
		for t := range m.Tables {
			d.Tables = append(d.Tables, t)
		}
		slices.Sort(d.Tables)
		datasets = append(datasets, d)
	}
	v.Title, v.Nav = "Public register", "register"
	v.Data = struct {
		Projects []registerProject
		Datasets []registerDataset
	}{projects, datasets}
	a.render(w, "register", v)
	return nil
}

// withheld reads, from a version's ingest report, how many patients'
// records were withheld for the National Data Opt-out and for type 1
// dissent, each rounded to 5.
func withheld(report json.RawMessage) (ndop, dissent int64) {
	var rep struct {
		Tables map[string]struct {
			Reasons map[string]int64 `json:"reasons"`
		} `json:"tables"`
	}
	if json.Unmarshal(report, &rep) != nil {
		return 0, 0
	}
	p := rep.Tables["patients"].Reasons
	return catalog.RoundTo(p["ndop"], 5), catalog.RoundTo(p["type1_dissent"], 5)
}

// The catalog: every dataset's versions and the code lists queries may
// name, for anyone; a version's page is where the DCAT export's dataset
// IRI (BASE/catalog/NAME/VERSION) leads.

type catalogDataset struct {
	Name     string
	Versions []int
}

func (a *app) catalogPage(w http.ResponseWriter, r *http.Request, v *view) error {
	names, err := a.Lake.Datasets(r.Context())
	if err != nil {
		return err
	}
	var ds []catalogDataset
	for _, n := range names {
		vs, err := a.Lake.Versions(r.Context(), n)
		if err != nil {
			return err
		}
		slices.Reverse(vs)
		ds = append(ds, catalogDataset{n, vs})
	}
	lists, err := a.Svc.Codelists()
	if err != nil {
		return err
	}
	v.Title, v.Nav = "Catalog", "catalog"
	v.Data = struct {
		Datasets  []catalogDataset
		Codelists []cohorts.Codelist
	}{ds, lists}
	a.render(w, "catalog", v)
	return nil
}

type datasetTable struct {
	Name    string
	Rows    int64 // rounded to 10
	Columns []catalog.Column
}

func (a *app) datasetPage(w http.ResponseWriter, r *http.Request, v *view) error {
	version, err := strconv.Atoi(r.PathValue("version"))
	if err != nil || version < 1 || !catalog.ValidName(r.PathValue("dataset")) {
		return notFound("no such dataset version")
	}
	m, err := a.Lake.Manifest(r.Context(), r.PathValue("dataset"), version)
	if err != nil {
		return err
	}
	var tables []datasetTable
	for _, name := range slices.Sorted(maps.Keys(m.Tables)) {
		t := m.Tables[name]
		tables = append(tables, datasetTable{name, catalog.RoundCount(t.Rows), t.Schema})
	}
	ndop, dissent := withheld(m.Reports["ingest"])
	// What protects the rows, in words and without a count: the
	// k-anonymity check's k and attributes, and the rare-code rule.
	var deid struct {
		KAnonymity struct {
			K                int      `json:"k"`
			QuasiIdentifiers []string `json:"quasi_identifiers"`
		} `json:"k_anonymity"`
		Policy struct {
			RareCodes string `json:"rare_codes"`
		} `json:"policy"`
	}
	json.Unmarshal(m.Reports["deid"], &deid)
	v.Title, v.Nav = fmt.Sprintf("%s version %d", m.Dataset, m.Version), "catalog"
	v.Data = struct {
		Manifest      *catalog.Manifest
		Tables        []datasetTable
		NDOP, Dissent int64
		K             int
		Attributes    string
		RareCodes     bool
	}{m, tables, ndop, dissent, deid.KAnonymity.K, strings.Join(deid.KAnonymity.QuasiIdentifiers, ", "), deid.Policy.RareCodes == "generalise"}
	a.render(w, "dataset", v)
	return nil
}

// Signing in and out.

func (a *app) signInForm(w http.ResponseWriter, r *http.Request, v *view) error {
	v.Title, v.Nav = "Sign in", "sign-in"
	v.Data = map[string]string{"Next": safeNext(r.URL.Query().Get("next"))}
	a.render(w, "signin", v)
	return nil
}

// safeNext is a local path to go to after signing in, "/" otherwise.
func safeNext(next string) string {
	if u, err := url.Parse(next); err != nil || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") || u.Host != "" {
		return "/"
	}
	return next
}

func (a *app) signIn(w http.ResponseWriter, r *http.Request) {
	v := &view{Title: "Sign in", Nav: "sign-in", CSRF: a.preSession(w, r)}
	next := safeNext(r.PostFormValue("next"))
	v.Data = map[string]string{"Next": next}
	c, err := r.Cookie(preCookie)
	if err != nil || !sameToken(r.PostFormValue("csrf"), c.Value) {
		a.fail(w, r, v, forbidden("the form was stale or not sent by this site: go back, reload the page and try again"))
		return
	}
	addr := api.ClientAddr(r)
	if blocked, wait := a.Failures.Blocked(addr); blocked {
		w.Header().Set("Retry-After", fmt.Sprint(int(wait.Seconds())+1))
		a.fail(w, r, v, &httpError{http.StatusTooManyRequests, "too many failed sign-ins from this address; wait a minute, then try again"})
		return
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	if token == "" {
		v.Errors = []fieldError{{"token", "Enter your hub token"}}
		w.WriteHeader(http.StatusBadRequest)
		a.render(w, "signin", v)
		return
	}
	if _, err := a.Gov.Authenticate(token); err != nil {
		if errors.Is(err, governance.ErrUnauthorized) {
			a.Failures.Fail(addr)
		}
		v.Errors = []fieldError{{"token", "This token was not accepted: it may be mistyped, expired or revoked. Ask an admin for a new one (hub user token)."}}
		w.WriteHeader(http.StatusUnauthorized)
		a.render(w, "signin", v)
		return
	}
	a.startSession(w, token)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (a *app) signOut(w http.ResponseWriter, r *http.Request, v *view) error {
	a.endSession(w, r)
	http.Redirect(w, r, "/", http.StatusSeeOther)
	return nil
}

// Projects.

type projectRow struct {
	Project *governance.Project
	Budget  *cohorts.Budget
}

// visibleProjects are the approved projects the principal may view.
func (a *app) visibleProjects(p *governance.Principal) ([]projectRow, error) {
	entries, err := a.Gov.Register()
	if err != nil {
		return nil, err
	}
	var out []projectRow
	for _, e := range entries {
		pr, err := a.Gov.Project(e.Project)
		if err != nil {
			continue
		}
		if !slices.Contains(pr.Members, p.Name) && !p.Has(governance.DAC) && !p.Has(governance.Admin) {
			continue
		}
		b, err := a.Svc.Budget(e.Project)
		if err != nil {
			return nil, err
		}
		out = append(out, projectRow{pr, b})
	}
	return out, nil
}

func (a *app) projects(w http.ResponseWriter, r *http.Request, v *view) error {
	rows, err := a.visibleProjects(v.Principal)
	if err != nil {
		return err
	}
	v.Title, v.Nav, v.Data = "Projects", "projects", rows
	a.render(w, "projects", v)
	return nil
}

// canQuery reports whether p may spend the project's budget (the
// governance store's rule, asked without recording a refusal).
func canQuery(p *governance.Principal, pr *governance.Project) bool {
	return slices.Contains(pr.Members, p.Name) && (p.Has(governance.Researcher) || p.Has(governance.Analyst))
}

func (a *app) project(w http.ResponseWriter, r *http.Request, v *view) error {
	name := r.PathValue("project")
	pr, err := a.Gov.Authorize(v.Principal, name, governance.ScopeView)
	if err != nil {
		return err
	}
	b, err := a.Svc.Budget(name)
	if err != nil {
		return err
	}
	hist, err := a.Svc.History(name)
	if err != nil {
		return err
	}
	slices.Reverse(hist)
	v.Title, v.Nav = "Project "+name, "projects"
	v.Data = struct {
		Project  *governance.Project
		Budget   *cohorts.Budget
		History  []cohorts.Entry
		CanQuery bool
	}{pr, b, hist, canQuery(v.Principal, pr) && pr.Allows(pr.Datasets[0], a.Now()) == nil}
	a.render(w, "project", v)
	return nil
}

// The cohort builder.

// builderForm is the builder's fields, as the form posts them.
type builderForm struct {
	Dataset, IndexDate, Sex, AgeMin, AgeMax      string
	Codelist, Snomed, ICD10, CondFrom, CondTo    string
	NotSnomed                                    string
	ObsCode, ObsMin, ObsFrom, ObsTo, By, Epsilon string
	Measure, Lower, Upper                        string
}

func readBuilder(r *http.Request) builderForm {
	f := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	return builderForm{Dataset: f("dataset"), IndexDate: f("index_date"), Sex: f("sex"), AgeMin: f("age_min"), AgeMax: f("age_max"),
		Codelist: f("codelist"), Snomed: f("snomed"), ICD10: f("icd10"), CondFrom: f("cond_from"), CondTo: f("cond_to"),
		NotSnomed: f("not_snomed"), ObsCode: f("obs_code"), ObsMin: f("obs_min"), ObsFrom: f("obs_from"), ObsTo: f("obs_to"), By: f("by"),
		Epsilon: f("epsilon"), Measure: f("measure"), Lower: f("lower"), Upper: f("upper")}
}

// query writes the form as the cohort language's JSON, the same the API
// takes; field errors say what to correct.
func (b builderForm) query() ([]byte, []fieldError) {
	var errs []fieldError
	num := func(field, s string) *float64 {
		if s == "" {
			return nil
		}
		x, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			errs = append(errs, fieldError{field, "Enter a number"})
			return nil
		}
		return &x
	}
	list := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\r' || r == '\t' })
	}
	window := func(from, to string) map[string]any {
		if from == "" && to == "" {
			return nil
		}
		w := map[string]any{}
		if from != "" {
			w["from"] = from
		}
		if to != "" {
			w["to"] = to
		}
		return w
	}
	var all []any
	if b.Sex != "" && b.Sex != "any" {
		all = append(all, map[string]any{"sex": []string{b.Sex}})
	}
	if lo, hi := num("age_min", b.AgeMin), num("age_max", b.AgeMax); lo != nil || hi != nil {
		age := map[string]any{}
		if lo != nil {
			age["min"] = *lo
		}
		if hi != nil {
			age["max"] = *hi
		}
		all = append(all, map[string]any{"age": age})
	}
	if b.Codelist != "" || b.Snomed != "" || b.ICD10 != "" {
		codes := map[string]any{}
		if b.Codelist != "" {
			codes["codelist"] = b.Codelist
		}
		if s := list(b.Snomed); len(s) > 0 {
			codes["snomed"] = s
		}
		if s := list(b.ICD10); len(s) > 0 {
			codes["icd10"] = s
		}
		c := map[string]any{"codes": codes}
		if w := window(b.CondFrom, b.CondTo); w != nil {
			c["window"] = w
		}
		all = append(all, map[string]any{"condition": c})
	}
	if b.ObsCode != "" {
		o := map[string]any{"codes": map[string]any{"snomed": list(b.ObsCode)}}
		if m := num("obs_min", b.ObsMin); m != nil {
			o["value"] = map[string]any{"min": *m}
		}
		if w := window(b.ObsFrom, b.ObsTo); w != nil {
			o["window"] = w
		}
		all = append(all, map[string]any{"observation": o})
	}
	if s := list(b.NotSnomed); len(s) > 0 {
		all = append(all, map[string]any{"not": map[string]any{"condition": map[string]any{"codes": map[string]any{"snomed": s}}}})
	}
	measure := map[string]any{"kind": "count"}
	bounds := func(lo, hi float64) {
		l, h := num("lower", b.Lower), num("upper", b.Upper)
		if l == nil {
			l = &lo
		}
		if h == nil {
			h = &hi
		}
		measure["lower"], measure["upper"] = *l, *h
	}
	switch b.Measure {
	case "", "count":
	case "mean_age":
		measure = map[string]any{"kind": "mean", "of": map[string]any{"kind": "age"}}
		bounds(0, 110)
	case "quantiles_age":
		measure = map[string]any{"kind": "quantiles", "of": map[string]any{"kind": "age"}, "ranks": []float64{0.25, 0.5, 0.75}}
		bounds(0, 110)
	case "mean_obs":
		if b.ObsCode == "" {
			errs = append(errs, fieldError{"obs_code", "Enter the observation's code: the mean is of its last value"})
		}
		measure = map[string]any{"kind": "mean", "of": map[string]any{"kind": "observation", "codes": map[string]any{"snomed": list(b.ObsCode)}, "pick": "last"}}
		bounds(0, 200)
	default:
		errs = append(errs, fieldError{"measure", "Choose what to release"})
	}
	if b.By != "" && b.By != "none" {
		if measure["kind"] != "count" {
			errs = append(errs, fieldError{"by", "Break down a count; a mean or quantiles are of the whole cohort"})
		}
		measure["by"] = []string{b.By}
	}
	q := map[string]any{"dataset": b.Dataset, "measures": []any{measure}}
	if b.IndexDate != "" {
		q["index_date"] = b.IndexDate
	}
	if len(all) > 0 {
		q["criteria"] = map[string]any{"all": all}
	}
	if e := num("epsilon", b.Epsilon); e != nil {
		q["epsilon"] = *e
	} else if b.Epsilon == "" {
		errs = append(errs, fieldError{"epsilon", "Enter the ε to spend, for example 0.5"})
	}
	out, _ := json.MarshalIndent(q, "", "  ")
	return out, errs
}

type builderData struct {
	Project   *governance.Project
	Budget    *cohorts.Budget
	Codelists []cohorts.Codelist
	Form      builderForm
	JSON      string
	// The preview: the query's cost and what a count will look like.
	Preview            bool
	Epsilon, PerFigure float64
	HalfWidth          float64
	Fits               bool
}

func (a *app) builderData(r *http.Request, v *view) (*builderData, error) {
	name := r.PathValue("project")
	pr, err := a.Gov.Authorize(v.Principal, name, governance.ScopeQuery)
	if err != nil {
		return nil, err
	}
	if err := pr.Allows(pr.Datasets[0], a.Now()); err != nil { // withdrawn or expired
		return nil, err
	}
	b, err := a.Svc.Budget(name)
	if err != nil {
		return nil, err
	}
	lists, err := a.Svc.Codelists()
	if err != nil {
		return nil, err
	}
	v.Title, v.Nav = "Build a cohort query", "projects"
	return &builderData{Project: pr, Budget: b, Codelists: lists,
		Form: builderForm{Dataset: pr.Datasets[0], Epsilon: "0.5", IndexDate: a.Now().Format(time.DateOnly), By: "none", Sex: "any", Measure: "count"}}, nil
}

func (a *app) builder(w http.ResponseWriter, r *http.Request, v *view) error {
	d, err := a.builderData(r, v)
	if err != nil {
		return err
	}
	v.Data = d
	a.render(w, "builder", v)
	return nil
}

// runBuilder previews (action=preview) or runs (action=run) a query. A
// run takes the JSON the preview showed, so what runs is what was seen.
func (a *app) runBuilder(w http.ResponseWriter, r *http.Request, v *view) error {
	d, err := a.builderData(r, v)
	if err != nil {
		return err
	}
	v.Data = d
	d.Form = readBuilder(r)
	var text []byte
	if r.PostFormValue("action") == "run" && r.PostFormValue("json") != "" {
		text = []byte(r.PostFormValue("json"))
	} else {
		var errs []fieldError
		if text, errs = d.Form.query(); len(errs) > 0 {
			v.Errors = errs
			w.WriteHeader(http.StatusBadRequest)
			a.render(w, "builder", v)
			return nil
		}
	}
	d.JSON = string(text)
	q, err := cohorts.ParseQuery(strings.NewReader(d.JSON))
	if err != nil {
		var qe *cohorts.QueryError
		if errors.As(err, &qe) {
			v.Errors = []fieldError{{"json", "The query is not valid: " + qe.Msg}}
		} else {
			v.Errors = []fieldError{{"json", err.Error()}}
		}
		w.WriteHeader(http.StatusBadRequest)
		a.render(w, "builder", v)
		return nil
	}
	if r.PostFormValue("action") != "run" {
		d.Preview, d.Epsilon, d.PerFigure = true, q.Epsilon, q.MeasureEpsilon()
		if d.HalfWidth, err = cohorts.CountHalfWidth(d.PerFigure); err != nil {
			return err
		}
		d.Fits = q.Epsilon <= d.Budget.EpsilonRemaining+1e-9 && q.Epsilon <= d.Budget.MaxQueryEpsilon+1e-9
		a.render(w, "builder", v)
		return nil
	}
	ans, err := api.Query(r.Context(), a.Gov, a.Svc, v.Principal, d.Project.Name, q)
	if err != nil {
		return err
	}
	http.Redirect(w, r, "/projects/"+url.PathEscape(d.Project.Name)+"/answers/"+ans.QuerySHA256, http.StatusSeeOther)
	return nil
}

// Answers.

func (a *app) released(r *http.Request, v *view) (*cohorts.Answer, error) {
	name := r.PathValue("project")
	if _, err := a.Gov.Authorize(v.Principal, name, governance.ScopeView); err != nil {
		return nil, err
	}
	return a.Svc.Released(name, r.PathValue("hash"))
}

func (a *app) answer(w http.ResponseWriter, r *http.Request, v *view) error {
	ans, err := a.released(r, v)
	if err != nil {
		return err
	}
	var charts []chart
	for _, m := range ans.Measures {
		charts = append(charts, chartOf(m))
	}
	v.Title, v.Nav = "Answer", "projects"
	v.Data = struct {
		Project string
		Answer  *cohorts.Answer
		Charts  []chart
	}{r.PathValue("project"), ans, charts}
	a.render(w, "answer", v)
	return nil
}

func (a *app) answerCSV(w http.ResponseWriter, r *http.Request, v *view) error {
	ans, err := a.released(r, v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", "answer-"+ans.QuerySHA256[:12]+".csv"))
	cw := csv.NewWriter(w)
	cw.Write([]string{"measure", "kind", "cell", "value", "ci_low", "ci_high", "suppressed", "epsilon"})
	for _, m := range ans.Measures {
		for _, row := range rowsOf(m) {
			cw.Write([]string{m.Name, m.Kind, row.Label, row.Value, row.Low, row.High, strconv.FormatBool(row.Suppressed), strconv.FormatFloat(m.Epsilon, 'g', -1, 64)})
		}
	}
	cw.Flush()
	return cw.Error()
}

// A posted is a submitted form read field by field; a field that is not
// the number it should be is noted in errs, beside its name.
type posted struct {
	r    *http.Request
	errs []fieldError
}

func (p *posted) text(k string) string { return strings.TrimSpace(p.r.PostFormValue(k)) }

// float is a field's number, 0 when empty.
func (p *posted) float(k string) float64 {
	if p.text(k) == "" {
		return 0
	}
	x, err := strconv.ParseFloat(p.text(k), 64)
	if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
		p.errs = append(p.errs, fieldError{k, "Enter a number"})
	}
	return x
}

// int is a field's whole number, 0 when empty.
func (p *posted) int(k string) int {
	if p.text(k) == "" {
		return 0
	}
	n, err := strconv.Atoi(p.text(k))
	if err != nil {
		p.errs = append(p.errs, fieldError{k, "Enter a whole number"})
	}
	return n
}

// Data access requests.

func (a *app) requests(w http.ResponseWriter, r *http.Request, v *view) error {
	reqs, err := a.Gov.Requests(v.Principal, governance.RequestFilter{})
	if err != nil {
		return err
	}
	slices.Reverse(reqs)
	groups := []struct {
		Heading  string
		Requests []*governance.Request
	}{{"Waiting for the committee", nil}, {"Decided", nil}, {"Drafts and withdrawn", nil}}
	for _, q := range reqs {
		switch {
		case pending(q) != nil:
			groups[0].Requests = append(groups[0].Requests, q)
			continue
		}
		switch q.State {
		case governance.Submitted, governance.InReview:
			groups[0].Requests = append(groups[0].Requests, q)
		case governance.Approved, governance.ApprovedWithConditions, governance.Rejected:
			groups[1].Requests = append(groups[1].Requests, q)
		default:
			groups[2].Requests = append(groups[2].Requests, q)
		}
	}
	v.Title, v.Nav, v.Data = "Data access requests", "requests", groups
	a.render(w, "requests", v)
	return nil
}

// legalBases are governance.LegalBases in words.
var legalBases = []struct{ Value, Label string }{
	{"anonymised", "Anonymised: only differentially private aggregates leave the hub"},
	{"s251", "Section 251 support (Confidentiality Advisory Group)"},
	{"consent", "Explicit consent of the patients"},
	{"statutory", "A statutory basis (e.g. a direction under the Health and Social Care Act)"},
}

func (a *app) newRequestForm(w http.ResponseWriter, r *http.Request, v *view) error {
	if !v.Principal.Has(governance.Researcher) {
		return forbidden("only researchers submit data access requests")
	}
	names, err := a.Lake.Datasets(r.Context())
	if err != nil {
		return err
	}
	v.Title, v.Nav = "New data access request", "requests"
	v.Data = map[string]any{"Datasets": names, "LegalBases": legalBases, "Form": map[string]string{"epsilon": "2", "max_query_epsilon": "0.5", "delta": "0.00001", "duration_days": "365"}}
	a.render(w, "newrequest", v)
	return nil
}

func (a *app) newRequest(w http.ResponseWriter, r *http.Request, v *view) error {
	names, err := a.Lake.Datasets(r.Context())
	if err != nil {
		return err
	}
	form := map[string]string{}
	for _, k := range []string{"title", "project", "purpose", "lay_summary", "legal_basis", "epsilon", "delta", "max_query_epsilon", "duration_days", "researchers"} {
		form[k] = strings.TrimSpace(r.PostFormValue(k))
	}
	p := &posted{r: r}
	yes := r.PostFormValue("national_opt_out") == "yes"
	spec := governance.RequestSpec{Project: form["project"], Title: form["title"], Purpose: form["purpose"], LaySummary: form["lay_summary"],
		Datasets: r.PostForm["datasets"], Epsilon: p.float("epsilon"), Delta: p.float("delta"), MaxQueryEpsilon: p.float("max_query_epsilon"),
		LegalBasis: form["legal_basis"], NationalOptOutApplies: &yes, Researchers: strings.Fields(strings.ReplaceAll(form["researchers"], ",", " ")),
		DurationDays: p.int("duration_days")}
	v.Errors = p.errs
	if len(v.Errors) == 0 {
		req, err := a.Gov.CreateRequest(v.Principal, spec, true)
		if err == nil {
			http.Redirect(w, r, "/requests/"+url.PathEscape(req.ID), http.StatusSeeOther)
			return nil
		}
		if !errors.Is(err, governance.ErrInvalid) {
			return err
		}
		field := "title"
		for _, k := range []string{"legal_basis", "lay_summary", "purpose", "datasets", "epsilon", "delta", "max_query_epsilon", "duration_days", "researchers", "project"} {
			if strings.Contains(err.Error(), k) {
				field = k
				break
			}
		}
		v.Errors = append(v.Errors, fieldError{field, err.Error()})
	}
	v.Title, v.Nav = "New data access request", "requests"
	v.Data = map[string]any{"Datasets": names, "LegalBases": legalBases, "Form": form, "Chosen": r.PostForm["datasets"]}
	w.WriteHeader(http.StatusBadRequest)
	a.render(w, "newrequest", v)
	return nil
}

// pending is the request's amendment waiting for the committee, if any.
func pending(r *governance.Request) *governance.Amendment {
	if n := len(r.Amendments); n > 0 && r.Amendments[n-1].State == "pending" &&
		(r.State == governance.Approved || r.State == governance.ApprovedWithConditions) {
		return r.Amendments[n-1]
	}
	return nil
}

type requestData struct {
	Request *governance.Request
	Audit   []*governance.Entry
	// Pending is an amendment waiting for the committee; votes are then
	// on it.
	Pending  *governance.Amendment
	CanVote  bool
	Voted    bool
	CanAmend bool
	CanDrop  bool
	// What the requested ε means: a count's 95% interval half-width with
	// all of it on one count, and with the per-query cap.
	WholeWidth, CapWidth float64
	QueriesAtCap         int
	Defaults             governance.ReleaseRules
}

func (a *app) request(w http.ResponseWriter, r *http.Request, v *view) error {
	req, err := a.Gov.Request(v.Principal, r.PathValue("id"))
	if err != nil {
		return err
	}
	d := &requestData{Request: req, Defaults: governance.DefaultRules}
	if v.Principal.Has(governance.DAC) || v.Principal.Has(governance.Admin) {
		if d.Audit, err = a.Gov.Audit(v.Principal, governance.AuditFilter{Request: req.ID}); err != nil {
			return err
		}
	}
	d.Pending = pending(req)
	votes := req.Votes
	if d.Pending != nil {
		votes = d.Pending.Votes
	}
	member := req.Submitter == v.Principal.Name || slices.Contains(req.Researchers, v.Principal.Name)
	d.CanVote = v.Principal.Has(governance.DAC) && !member && (req.State == governance.Submitted || req.State == governance.InReview || d.Pending != nil)
	d.Voted = slices.ContainsFunc(votes, func(x governance.Vote) bool { return x.Reviewer == v.Principal.Name })
	mine := req.Submitter == v.Principal.Name
	d.CanAmend = mine && d.Pending == nil && (req.State == governance.Approved || req.State == governance.ApprovedWithConditions)
	d.CanDrop = mine && req.State != governance.Rejected && req.State != governance.Withdrawn
	if req.Epsilon > 0 {
		d.WholeWidth, _ = cohorts.CountHalfWidth(req.Epsilon)
	}
	if req.MaxQueryEpsilon > 0 {
		d.CapWidth, _ = cohorts.CountHalfWidth(req.MaxQueryEpsilon)
		d.QueriesAtCap = int(req.Epsilon / req.MaxQueryEpsilon)
	}
	v.Title, v.Nav, v.Data = req.Title, "requests", d
	a.render(w, "request", v)
	return nil
}

func (a *app) approve(w http.ResponseWriter, r *http.Request, v *view) error {
	p := &posted{r: r}
	g := governance.Grant{Epsilon: p.float("epsilon"), MaxQueryEpsilon: p.float("max_query_epsilon"), Reason: p.text("reason"), Conditions: p.text("conditions")}
	// Release rules are a term of the first decision; an amendment keeps
	// the project's (its form has no rule fields).
	if rules := (governance.ReleaseRules{SuppressBelow: p.int("suppress_below"), RoundTo: p.int("round_to"), MinCohort: p.int("min_cohort")}); rules != (governance.ReleaseRules{}) {
		g.Rules = &rules
	}
	if e := p.text("expires"); e != "" {
		t, err := time.Parse(time.DateOnly, e)
		if err != nil {
			p.errs = append(p.errs, fieldError{"expires", "Enter a date as YYYY-MM-DD"})
		}
		g.Expires = t
	}
	if v.Errors = p.errs; len(v.Errors) > 0 {
		return &httpError{http.StatusBadRequest, v.Errors[0].Field + ": " + v.Errors[0].Message}
	}
	if _, err := a.Gov.Approve(v.Principal, r.PathValue("id"), g, a.Svc.Spent); err != nil {
		return err
	}
	http.Redirect(w, r, "/requests/"+url.PathEscape(r.PathValue("id")), http.StatusSeeOther)
	return nil
}

func (a *app) reject(w http.ResponseWriter, r *http.Request, v *view) error {
	if _, err := a.Gov.Reject(v.Principal, r.PathValue("id"), strings.TrimSpace(r.PostFormValue("reason"))); err != nil {
		return err
	}
	http.Redirect(w, r, "/requests/"+url.PathEscape(r.PathValue("id")), http.StatusSeeOther)
	return nil
}

func (a *app) amend(w http.ResponseWriter, r *http.Request, v *view) error {
	p := &posted{r: r}
	spec := governance.AmendmentSpec{Epsilon: p.float("epsilon"), MaxQueryEpsilon: p.float("max_query_epsilon"), ExtendDays: p.int("extend_days"), Reason: p.text("reason")}
	if len(p.errs) > 0 {
		return &httpError{http.StatusBadRequest, p.errs[0].Field + ": " + p.errs[0].Message}
	}
	if _, err := a.Gov.Amend(v.Principal, r.PathValue("id"), spec); err != nil {
		return err
	}
	http.Redirect(w, r, "/requests/"+url.PathEscape(r.PathValue("id")), http.StatusSeeOther)
	return nil
}

func (a *app) withdraw(w http.ResponseWriter, r *http.Request, v *view) error {
	if _, err := a.Gov.Withdraw(v.Principal, r.PathValue("id")); err != nil {
		return err
	}
	http.Redirect(w, r, "/requests/"+url.PathEscape(r.PathValue("id")), http.StatusSeeOther)
	return nil
}

// Admins: users and tokens.

func (a *app) users(w http.ResponseWriter, r *http.Request, v *view) error {
	return a.usersPage(w, v, "", "", "")
}

// issueToken gives a user a new token, shown once.
func (a *app) issueToken(w http.ResponseWriter, r *http.Request, v *view) error {
	name := r.PathValue("name")
	token, err := a.Gov.IssueToken(v.Principal, name, 90*24*time.Hour)
	if err != nil {
		return err
	}
	return a.usersPage(w, v, token, name, "")
}

// revokeTokens revokes a user's token (token: its id) or every token of
// theirs, which ends their sessions.
func (a *app) revokeTokens(w http.ResponseWriter, r *http.Request, v *view) error {
	var only []string
	if id := strings.TrimSpace(r.PostFormValue("token")); id != "" {
		only = []string{id}
	}
	ids, err := a.Gov.RevokeTokens(v.Principal, r.PathValue("name"), only)
	if err != nil {
		return err
	}
	return a.usersPage(w, v, "", "", fmt.Sprintf("%d of %s's tokens revoked; their sessions have ended.", len(ids), r.PathValue("name")))
}

func (a *app) usersPage(w http.ResponseWriter, v *view, token, user, notice string) error {
	us, err := a.Gov.Users(v.Principal)
	if err != nil {
		return err
	}
	v.Title, v.Nav, v.Notice = "Users", "users", notice
	v.Data = map[string]any{"Users": us, "Roles": governance.Roles, "Token": token, "NewUser": user}
	a.render(w, "users", v)
	return nil
}

func (a *app) addUser(w http.ResponseWriter, r *http.Request, v *view) error {
	var roles []governance.Role
	for _, x := range r.PostForm["roles"] {
		roles = append(roles, governance.Role(x))
	}
	days, _ := strconv.Atoi(r.PostFormValue("token_days"))
	if days <= 0 {
		days = 90
	}
	name := strings.TrimSpace(r.PostFormValue("name"))
	token, err := a.Gov.AddUser(v.Principal, name, roles, time.Duration(days)*24*time.Hour)
	if err != nil {
		return err
	}
	// The token is shown once, in this response's body only.
	return a.usersPage(w, v, token, name, "")
}
