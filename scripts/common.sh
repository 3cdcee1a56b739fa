# Shared by scripts/test, scripts/demo and scripts/bench: install what is
# missing (Debian 12), then configure and build out of tree.
# shellcheck shell=bash

MU_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

MU_DEB_PACKAGES=(
    gcc make autoconf automake libtool pkg-config
    libevent-dev libcurl4-openssl-dev libyajl-dev libcmocka-dev
    libzookeeper-st-dev liblz4-dev libssl-dev
    zookeeper
    openssl
)

mu_log() { printf '==> %s\n' "$*" >&2; }

mu_install_deps() {
    local missing=() p
    for p in "${MU_DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    mu_log "installing: ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root or sudo to install ${missing[*]}" >&2; return 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# mu_build DIR [configure args...]: an out-of-tree build in $MU_TOP/DIR.
mu_build() {
    local name=$1 dir=$MU_TOP/$1; shift
    if [ ! -x "$MU_TOP/configure" ] || [ "$MU_TOP/configure.ac" -nt "$MU_TOP/configure" ] ||
       [ "$MU_TOP/Makefile.am" -nt "$MU_TOP/Makefile.in" ]; then
        mu_log "autoreconf"
        (cd "$MU_TOP" && autoreconf -fi >/dev/null 2>&1) || (cd "$MU_TOP" && autoreconf -fi)
    fi
    if [ -f "$MU_TOP/config.status" ]; then
        # An in-tree ./configure blocks every out-of-tree build.
        mu_log "removing the in-tree build (make distclean) so that $name can be built"
        make -C "$MU_TOP" -s distclean >/dev/null 2>&1 || rm -f "$MU_TOP/config.status"
    fi
    mkdir -p "$dir"
    local want="$*"
    if [ ! -f "$dir/Makefile" ] || [ "$(cat "$dir/.configure-args" 2>/dev/null)" != "$want" ]; then
        mu_log "configure $want"
        (cd "$dir" && "$MU_TOP/configure" -q "$@") || return 1
        printf '%s' "$want" > "$dir/.configure-args"
    fi
    mu_log "build in ${dir#"$MU_TOP"/}"
    # MU_MAKE_GOALS: what to build instead of everything (scripts/fuzz: fuzz).
    # shellcheck disable=SC2086
    make -C "$dir" -s -j"$(nproc)" ${MU_MAKE_GOALS-} >/dev/null || make -C "$dir" -j1 ${MU_MAKE_GOALS-}
}

# mu_install_optional PACKAGE...: installs, like mu_install_deps, Debian
# packages that only some checks need (cmake, mandoc), so that building and
# the test suite proper do not depend on them.
mu_install_optional() {
    local MU_DEB_PACKAGES=("$@")
    mu_install_deps
}
