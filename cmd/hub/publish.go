package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/deid"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/pipeline"
	"github.com/urfave/cli/v2"
)

// publish runs ingest → deid → publish.
func publish(c *cli.Context) error {
	name := c.String("dataset")
	if name == "" {
		return errors.New("name the dataset to publish with --dataset NAME, or run with --check to validate the extract only")
	}
	keyPath := c.String("key-file")
	if keyPath == "" {
		return errors.New("no pseudonymisation key: pass --key-file FILE or set HUB_PSEUDONYM_KEY_FILE (a file of at least 32 random bytes, e.g. `head -c 32 /dev/urandom > key`)")
	}
	key, err := deid.LoadKey(keyPath)
	if err != nil {
		return fmt.Errorf("%w (make one with `head -c 32 /dev/urandom > FILE`)", err)
	}
	policy := deid.DefaultPolicy()
	if p := c.String("policy"); p != "" {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("open policy: %w", err)
		}
		policy, err = deid.LoadPolicy(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	lake, err := openLake(c)
	if err != nil {
		return err
	}
	opts, done, err := ingestOptions(c)
	if err != nil {
		return err
	}
	defer done()
	date := c.String("optouts-date")
	if date == "" {
		if st, err := os.Stat(c.String("optouts")); err == nil {
			date = st.ModTime().UTC().Format(time.DateOnly)
		}
	}
	res, err := pipeline.Run(c.Context, pipeline.Config{
		Dataset: name, Source: ingest.Dir(c.String("extract")), SourceName: c.String("extract"),
		Ingest: opts, OptOutDate: date, Policy: policy, Key: key, Lake: lake, Logger: logger(c),
	})
	if err != nil {
		return fmt.Errorf("publish %s: %w (nothing was published; `hub catalog gc %s` removes any leftover parts)", name, err, name)
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, res.Manifest)
	}
	if err := res.Ingest.WriteText(c.App.Writer); err != nil {
		return err
	}
	k := res.Deid.KAnonymity
	fmt.Fprintf(c.App.Writer, "\nk-anonymity (k=%d): %d of %d patients generalised (district dropped), %d suppressed further\n",
		k.K, k.Generalised, k.Patients, k.Suppressed)
	fmt.Fprintf(c.App.Writer, "published %s@%d to %s (key %s, domain %s)\n", name, res.Manifest.Version, c.String("lake"), res.Deid.KeyFingerprint, res.Deid.Domain)
	return nil
}

// openLake opens the lake named by --lake.
func openLake(c *cli.Context) (*catalog.Lake, error) {
	loc := c.String("lake")
	if strings.HasPrefix(loc, "s3://") {
		return nil, errors.New("S3 lakes are not supported yet: use a local folder")
	}
	store, err := file.Open(loc)
	if err != nil {
		return nil, err
	}
	return catalog.NewLake(store), nil
}
