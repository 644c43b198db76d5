package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/nhs-hub/hub/ingest/bulkdata"
	"github.com/nhs-hub/hub/internal/secretfile"
	"github.com/urfave/cli/v2"
)

func fhirCommand() *cli.Command {
	return &cli.Command{
		Name:  "fhir",
		Usage: "set up pulls from an LHCRE's FHIR server (Bulk Data, SMART Backend Services)",
		Subcommands: []*cli.Command{{
			Name:  "keygen",
			Usage: "write a SMART Backend Services key pair and print the public JWKS to register with the server",
			Description: "Writes the private key to --out (PEM, mode 0600: keep it secret, as the pseudonymisation key)\n" +
				"and prints the public key set (JWKS) to register with the FHIR server for the hub's client id.\n" +
				"Pulls then use it with --fhir-client-id and --fhir-key-file.\n\n" +
				"Example:\n  hub fhir keygen --out fhir-client.pem > jwks.json",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "out", Required: true, Usage: "file to write the private key to (refused if it exists)"},
				&cli.StringFlag{Name: "alg", Value: "ES384", Usage: "ES384 (P-384) or RS384 (RSA 3072)"},
			},
			Action: func(c *cli.Context) error {
				k, err := bulkdata.NewKey(c.String("alg"))
				if err != nil {
					return usageError{err}
				}
				pemBytes, err := k.MarshalPEM()
				if err != nil {
					return err
				}
				jwks, err := k.JWKS()
				if err != nil {
					return err
				}
				err = secretfile.Create(c.String("out"), pemBytes)
				if errors.Is(err, os.ErrExist) {
					return fmt.Errorf("%s exists: keygen never overwrites a key; give another --out", c.String("out"))
				}
				if err != nil {
					return fmt.Errorf("write the key: %w", err)
				}
				fmt.Fprintf(c.App.Writer, "%s\n", jwks)
				fmt.Fprintf(c.App.ErrWriter, "wrote the private key (%s, kid %s) to %s; register the JWKS above with the server\n", k.Alg, k.ID, c.String("out"))
				return nil
			},
		}},
	}
}

// fhirAuth reads the SMART Backend Services credentials of a pull, or
// none when no client id is given.
func fhirAuth(c *cli.Context) (*bulkdata.Auth, error) {
	id, path := c.String("fhir-client-id"), c.String("fhir-key-file")
	if id == "" && path == "" {
		return nil, nil
	}
	if id == "" || path == "" {
		return nil, usageError{errors.New("SMART Backend Services need both --fhir-client-id and --fhir-key-file")}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the FHIR client key: %w", err)
	}
	k, err := bulkdata.ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("read the FHIR client key %s: %w (make one with `hub fhir keygen`)", path, err)
	}
	return &bulkdata.Auth{ClientID: id, Key: k}, nil
}
