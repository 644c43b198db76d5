package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/nhs-hub/hub/deid"
	"github.com/nhs-hub/hub/governance"
	"github.com/nhs-hub/hub/internal/secretfile"
	"github.com/urfave/cli/v2"
)

func keyCommand() *cli.Command {
	out := &cli.StringFlag{Name: "out", Required: true, Usage: "file to write the new key to (mode 0600; refused if it exists)"}
	lake := &cli.StringFlag{Name: "lake", EnvVars: []string{"HUB_LAKE"}, Usage: "with --dataset: the lake, to say which key version the dataset gives the key"}
	dataset := &cli.StringFlag{Name: "dataset", EnvVars: []string{"HUB_DATASET"}, Usage: "the dataset whose key version to say"}
	state := &cli.StringFlag{Name: "state", EnvVars: []string{"HUB_STATE"}, Usage: "record the rotation (fingerprints only) in the audit log of this server state folder"}
	return &cli.Command{
		Name:  "key",
		Usage: "make, rotate and identify pseudonymisation keys",
		Description: "A pseudonymisation key is 32 random bytes; the manifest of every version records its fingerprint\n" +
			"and its version (the dataset's keys numbered in the order its versions first used them), never\n" +
			"the key. See docs/deid-policy.md, \"Keys\", for when and how to rotate.",
		Subcommands: []*cli.Command{{
			Name:        "new",
			Usage:       "write a new random key",
			Description: "Example:\n  hub key new --out /etc/hub/pseudonym.key",
			Flags:       []cli.Flag{out},
			Action: func(c *cli.Context) error {
				k, err := writeKey(c.String("out"))
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "wrote a new key to %s: fingerprint %s\n", c.String("out"), k.Fingerprint())
				return nil
			},
		}, {
			Name:  "rotate",
			Usage: "write a new key to replace --key-file, and say what to do next",
			Description: "Writes a new random key to --out (the old key file is left as it is) and prints both fingerprints.\n" +
				"The next version published with the new key has unrelated pseudonyms and the next key version.\n" +
				"With --state, the rotation is recorded in the audit log.\n\n" +
				"Example:\n  hub key rotate --key-file /etc/hub/pseudonym.key --out /etc/hub/pseudonym-2027.key --lake ./lake --dataset demo",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "key-file", Required: true, EnvVars: []string{"HUB_PSEUDONYM_KEY_FILE"}, Usage: "the key in use"},
				out, lake, dataset, state, auditKeyFlag(),
			},
			Action: func(c *cli.Context) error {
				old, err := deid.LoadKey(c.String("key-file"))
				if err != nil {
					return err
				}
				k, err := writeKey(c.String("out"))
				if err != nil {
					return err
				}
				version := 0
				if c.String("lake") != "" && c.String("dataset") != "" {
					l, err := openLake(c)
					if err != nil {
						return err
					}
					if version, err = l.KeyVersion(c.Context, c.String("dataset"), k.Fingerprint()); err != nil {
						return err
					}
				}
				if c.String("state") != "" {
					gov, err := openGovernance(c)
					if err != nil {
						return err
					}
					defer gov.Close()
					data, _ := json.Marshal(map[string]any{"old_fingerprint": old.Fingerprint(), "new_fingerprint": k.Fingerprint(), "dataset": c.String("dataset"), "next_key_version": version})
					if _, err := gov.Record(hostPrincipal(), governance.Entry{Action: governance.ActKeyRotate, Dataset: c.String("dataset"), Data: data}); err != nil {
						return err
					}
				}
				w := c.App.Writer
				fmt.Fprintf(w, "new key %s written to %s (the key in use, %s, is unchanged)\n", k.Fingerprint(), c.String("out"), old.Fingerprint())
				if version > 0 {
					fmt.Fprintf(w, "the next version of %s published with it has key version %d\n", c.String("dataset"), version)
				}
				fmt.Fprintf(w, "next: publish with --key-file %s; then remove %s from every host (old versions need no key to be read)\n", c.String("out"), c.String("key-file"))
				return nil
			},
		}, {
			Name:        "show",
			Usage:       "print a key file's fingerprint (and its version in a dataset)",
			Description: "Example:\n  hub key show --key-file /etc/hub/pseudonym.key --lake ./lake --dataset demo",
			Flags:       []cli.Flag{&cli.StringFlag{Name: "key-file", Required: true, EnvVars: []string{"HUB_PSEUDONYM_KEY_FILE"}, Usage: "the key"}, lake, dataset},
			Action: func(c *cli.Context) error {
				k, err := deid.LoadKey(c.String("key-file"))
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "fingerprint %s\n", k.Fingerprint())
				if c.String("lake") != "" && c.String("dataset") != "" {
					l, err := openLake(c)
					if err != nil {
						return err
					}
					v, err := l.KeyVersion(c.Context, c.String("dataset"), k.Fingerprint())
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "key version %d in %s\n", v, c.String("dataset"))
				}
				return nil
			},
		}},
	}
}

// writeKey writes 32 random bytes, as hex, to a new file of mode 0600.
func writeKey(path string) (*deid.Key, error) {
	raw := make([]byte, 32)
	rand.Read(raw)
	k, err := deid.NewKey(raw)
	if err != nil {
		return nil, err
	}
	err = secretfile.Create(path, []byte(hex.EncodeToString(raw)+"\n"))
	if errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("%s exists: a key is never overwritten; give another --out", path)
	}
	if err != nil {
		return nil, fmt.Errorf("write the key: %w", err)
	}
	return k, nil
}
