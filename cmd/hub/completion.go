package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/nhs-hub/hub/api"
	"github.com/nhs-hub/hub/internal/pipeline"
)

// Exit codes: 0 done; 1 failed (I/O, a server error, a broken log);
// 2 the command line was wrong; 3 the hub refused (a bad token, a missing
// role, an exhausted budget, a bad query: HTTP 4xx); 4 a publish failed a
// safety check and wrote nothing.
const (
	exitFailed  = 1
	exitUsage   = 2
	exitRefused = 3
	// exitNotPublished: a publish failed a safety check (pipeline.Check)
	// and wrote nothing.
	exitNotPublished = 4
)

// A usageError is a command line that cannot be run as written.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func exitCode(err error) int {
	var ue usageError
	var ae *api.APIError
	switch {
	case errors.As(err, &ue), strings.HasPrefix(err.Error(), "Required flag"):
		return exitUsage
	case errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500:
		return exitRefused
	case errors.Is(err, pipeline.ErrRefused):
		return exitNotPublished
	}
	return exitFailed
}

// The completion scripts ask hub itself for the candidates
// (--generate-bash-completion, urfave/cli's protocol).
const bashCompletion = `# hub completion for bash: source <(hub completion bash)
_hub_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}"
  local words=("${COMP_WORDS[@]:0:$COMP_CWORD}")
  local opts
  if [[ "$cur" == -* ]]; then
    opts=$("${words[@]}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${words[@]}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o bashdefault -o default -F _hub_complete hub
`

const zshCompletion = `# hub completion for zsh: source <(hub completion zsh)
autoload -U +X bashcompinit && bashcompinit
` + bashCompletion

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash or zsh)",
		ArgsUsage: "bash|zsh",
		Description: "Completes commands, subcommands and flags.\n\n" +
			"Example: source <(hub completion bash)    # or add it to ~/.bashrc",
		Action: func(c *cli.Context) error {
			if err := args(c, 1); err != nil {
				return err
			}
			switch c.Args().First() {
			case "bash":
				fmt.Fprint(c.App.Writer, bashCompletion)
			case "zsh":
				fmt.Fprint(c.App.Writer, zshCompletion)
			default:
				return usageError{fmt.Errorf("no completion for %q: choose bash or zsh", c.Args().First())}
			}
			return nil
		},
	}
}
