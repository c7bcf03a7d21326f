#!/usr/bin/env bash
# pip-audit on the function's requirements (src/requirements.txt, as `sam build` installs
# them). Fails on any known vulnerability. When pip-audit could reach no vulnerability data
# for a dependency (a machine whose package mirror serves no per-release data and cannot
# reach OSV), that dependency is not audited: this says so, by name, instead of reporting
# "no known vulnerabilities".
set -euo pipefail
pip_audit=${1:-pip-audit}
cd "$(dirname "$0")/.."
report=$(mktemp)
trap 'rm -f "$report"' EXIT
status=0
"$pip_audit" -r src/requirements.txt --format json --progress-spinner off >"$report" 2>/dev/null || status=$?
python3 - "$report" "$status" <<'PY'
import json, sys
path, status = sys.argv[1], int(sys.argv[2])
try:
    found = json.load(open(path))["dependencies"]
except (OSError, ValueError, KeyError):
    print("pip-audit: no report (did it run?)", file=sys.stderr)
    sys.exit(status or 1)
vulnerable = [d for d in found if d.get("vulns")]
skipped = [d["name"] for d in found if "skip_reason" in d]
audited = len(found) - len(skipped)
for d in vulnerable:
    ids = ", ".join(v["id"] for v in d["vulns"])
    print(f"pip-audit: {d['name']} {d['version']}: {ids}")
print(f"pip-audit: {audited} of {len(found)} dependencies audited, {len(vulnerable)} vulnerable")
if skipped:
    print("pip-audit: NOT AUDITED (no vulnerability data reachable): " + ", ".join(skipped))
sys.exit(1 if vulnerable else 0)
PY
