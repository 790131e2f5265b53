#!/usr/bin/env bash
# The installed package, as a user gets it (docs/architecture.md, "Package map"):
#  1. `pip wheel --no-deps .` gives a wheel whose only top-level entry is vitaccel/ (+ its dist-info);
#  2. that wheel, installed non-editable into a fresh venv, runs `vitaccel --help`, `vitaccel spec` and a
#     `vitaccel estimate` from another directory, imports from the venv (not the checkout), and writes
#     nothing into site-packages.
# The fresh venv borrows the third-party packages of .venv (a .pth line; .venv's own .pth files and
# its editable finder are not processed that way), so torch is not installed a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m pip wheel -q --no-deps -w "$WORK/wheel" . 2>&1 | grep -v "^WARNING: Location" || true
WHEEL=$(ls "$WORK"/wheel/vitaccel-*.whl)
"$PY" - "$WHEEL" <<'PYEOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
top = sorted({n.split("/")[0] for n in names})
extra = [t for t in top if t != "vitaccel" and not (t.startswith("vitaccel-") and t.endswith(".dist-info"))]
assert not extra, f"wheel has top-level entries besides vitaccel/: {extra}"
for sub in ("sim", "hw", "golden", "tb", "flow"):
    assert any(n.startswith(f"vitaccel/{sub}/") for n in names), f"wheel lacks vitaccel/{sub}/"
for f in ("vitaccel/tb/csrc/accel_bench.cpp", "vitaccel/tb/csrc/accel_bench_top.v"):   # the accelerator bench
    assert f in names, f"wheel lacks {f}"
print(f"wheel ok: {len(names)} files, top level {top}")
PYEOF

python3 -m venv "$WORK/venv"
SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
MAIN_SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$MAIN_SITE" > "$SITE/_vitaccel_ci_deps.pth"
"$WORK/venv/bin/python" -m pip install -q --no-deps "$WHEEL" 2>&1 | grep -v "^WARNING: Location" || true

snapshot() { (cd "$SITE" && find . -path ./_vitaccel_ci_deps.pth -prune -o -type f -printf '%p %s %T@\n' | sort); }
snapshot > "$WORK/before.txt"
mkdir "$WORK/elsewhere" && cd "$WORK/elsewhere"
export HOME="$WORK/home" XDG_CACHE_HOME="$WORK/cache"
"$WORK/venv/bin/python" -c 'import vitaccel, vitaccel.sim, sys; f = vitaccel.sim.__file__; print("imports from", f); sys.exit(0 if f.startswith(sys.argv[1]) else 1)' "$SITE"
"$WORK/venv/bin/vitaccel" --help > /dev/null
"$WORK/venv/bin/vitaccel" --version
"$WORK/venv/bin/vitaccel" spec > /dev/null
"$WORK/venv/bin/vitaccel" estimate --model deit_tiny_patch16_224 --bits w4a4 --quiet --json est.json
test -s est.json
cd "$ROOT"
snapshot > "$WORK/after.txt"
if ! diff -q "$WORK/before.txt" "$WORK/after.txt" > /dev/null; then
    echo "files were written into site-packages:"; diff "$WORK/before.txt" "$WORK/after.txt" | head -20; exit 1
fi
echo "installed wheel ok: ran from another directory, nothing written into site-packages"
