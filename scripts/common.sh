# Shared by the project's scripts: where builds go, and installing Debian packages when missing.

# A build cache outside the clone keeps repeated runs (and CI) fast.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/capstan/target}"
# Incremental artifacts grow by gigabytes per build of a workspace this size and rarely pay off for a one-off run.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# apt_install PKG... installs the Debian packages that are not installed yet (as root, or with sudo).
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]} (apt)" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The one package set every script builds: capstan, capstan-hello and teamboard together. Building the same set each
# time unifies dependency features the same way, so a second script reuses the first one's build instead of
# rebuilding most crates. `build_bins` builds it in debug, `build_bins --release` optimised.
BIN_PACKAGES=(-p capstan-cli -p hello -p teamboard)
build_bins() {
  local start=$SECONDS
  cargo build --quiet "$@" "${BIN_PACKAGES[@]}"
  echo "   (built in $((SECONDS - start)) s)" >&2
}
