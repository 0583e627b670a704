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
