# Shared by install.sh and kubernetes.sh (sourced, not run).

# tools_bin ENV_FILE PREFIX prints the directory the tools ENV_FILE pins are
# cached in: keyed on the file, so a change to it builds them anew.
tools_bin() {
	local cache="${STRATA_TOOLS_CACHE:-/var/cache/strata-tools}"
	echo "$cache/$2$(sha256sum <"$1" | cut -c1-16)/bin"
}

# fetch_module MODULE@VERSION DEST copies a module from the module cache into
# a writable directory, to build it with edits go install refuses.
fetch_module() {
	local dir
	dir="$(go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	cp -r "$dir" "$2"
	chmod -R u+w "$2"
}

# apt_install PACKAGE... installs those of the Debian packages not yet
# installed.
apt_install() {
	local need=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
	done
	if [ ${#need[@]} -gt 0 ]; then
		echo "apt-get install ${need[*]}" >&2
		apt-get update -q >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
	fi
}

# exit_if_built BIN prints BIN and exits when a build into it finished.
exit_if_built() {
	if [ -f "$1/.complete" ]; then
		echo "$(basename "$0"): cached in $1" >&2
		echo "$1"
		exit 0
	fi
}
