#!/bin/sh
# Executes every notebook against a live `hub serve` on a fresh synthetic
# dataset, the way an analyst would run them: a researcher's request,
# approved by two DAC members, and the notebooks querying its project.
# A failing cell fails the run. Usage: notebooks/run.sh [HUB_BINARY]
# With HUB_FIGURES=DIR the population notebook also saves its plot there.
set -eu
HUB=$(realpath "${1:-bin/hub}")
JUPYTER=${JUPYTER:-/usr/bin/jupyter}
PY=${PY:-/usr/bin/python3}
if [ ! -x "$JUPYTER" ] || ! "$PY" -c 'import pandas, matplotlib, requests, ipykernel' 2>/dev/null; then
	echo "notebooks: Debian's jupyter-nbconvert, python3-ipykernel, python3-pandas, python3-matplotlib and" >&2
	echo "python3-requests are needed: apt-get install jupyter-nbconvert python3-ipykernel python3-pandas python3-matplotlib python3-requests" >&2
	exit 1
fi
cd "$(dirname "$0")"

# Committed notebooks carry no outputs.
"$PY" - *.ipynb <<'PY'
import json, sys
for path in sys.argv[1:]:
    nb = json.load(open(path))
    for c in nb["cells"]:
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None):
            sys.exit(f"{path}: commit notebooks with outputs stripped (jupyter nbconvert --clear-output --inplace {path})")
PY

work=$(mktemp -d)
pid=
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; fi; rm -rf "$work"' EXIT INT TERM
"$HUB" synth --patients 5000 --seed 2 --out "$work/extract" >/dev/null
head -c 32 /dev/urandom > "$work/key"
"$HUB" ingest --extract "$work/extract" --optouts "$work/extract/optouts.txt" --dataset demo \
	--lake "$work/lake" --key-file "$work/key" --state "$work/state" >/dev/null
for u in rosa:researcher dina:dac dev:dac; do
	"$HUB" user add --state "$work/state" --role "${u#*:}" "${u%%:*}" > "$work/${u%%:*}.token" 2>/dev/null
done
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$HUB" serve --lake "$work/lake" --state "$work/state" --addr "127.0.0.1:$port" 2>"$work/serve.log" &
pid=$!
export HUB_SERVER="http://127.0.0.1:$port"
"$PY" - "$work/request.json" <<'PY'
import json, sys
r = json.load(open("../docs/examples/request.json"))
r.update(project="notebooks", epsilon=10, max_query_epsilon=2)
json.dump(r, open(sys.argv[1], "w"))
PY
"$HUB" request submit --wait 30s --token-file "$work/rosa.token" --file "$work/request.json" >/dev/null
"$HUB" dac approve --token-file "$work/dina.token" --reason "notebook tests" req-1 >/dev/null
"$HUB" dac approve --token-file "$work/dev.token" --reason "notebook tests" req-1 >/dev/null

export HUB_TOKEN_FILE="$work/rosa.token" HUB_PROJECT=notebooks HUB_DATASET=demo
for nb in *.ipynb; do
	echo "notebooks: running $nb"
	"$JUPYTER" nbconvert --to notebook --execute --ExecutePreprocessor.timeout=300 \
		--output-dir "$work/out" "$nb" 2>"$work/nbconvert.log" || { cat "$work/nbconvert.log" >&2; exit 1; }
done
"$HUB" budget --token-file "$work/rosa.token"
echo "notebooks: all ran"
