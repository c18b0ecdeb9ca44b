#!/usr/bin/env bash
# The man pages and the bash completion say what the programs do: every
# subcommand, option and exit status of `diskcrypt --help` and
# `diskcrypt-agent --help` is in diskcrypt(8) / diskcrypt-agent(8) and the
# completion, nothing there is missing from --help, and every key of the
# example configuration is in diskcrypt-agent.toml(5).
#
# Usage: tests/packaging/check-docs.sh DISKCRYPT_BIN AGENT_BIN
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cli=$1 agent=$2
MAN=$ROOT/packaging/man
COMPLETION=$ROOT/packaging/bash-completion/diskcrypt
failures=0
fail() {
	echo "check-docs: $*" >&2
	failures=$((failures + 1))
}

# Long options of a --help text (CLI11: "  -c,--config TEXT", "  --json").
help_options() {
	{ grep -oE '^  (-[a-zA-Z],)?--[a-z][a-z-]*' || true; } | sed 's/.*--/--/' | { grep -vx -- --help || true; } | sort -u
}
# The **--options** of a Markdown section.
man_options() {
	{ grep -oE '\*\*--[a-z][a-z-]*\*\*' || true; } | tr -d '*' | { grep -vx -- --help || true; } | sort -u
}
# Lines of FILE from "## NAME" (exact heading) to the next heading.
man_section() {
	awk -v h="$2" '$0 ~ /^#/ { on = ($0 == h) || index($0, h " ") == 1; next } on' "$1"
}

subcommands=$("$cli" --help | awk '/^Subcommands:/ { on = 1; next } on && /^  [a-z]/ { print $1 }')
[[ -n "$subcommands" ]] || fail "no subcommands in diskcrypt --help"
completion_commands=$(sed -n 's/^ *local commands="\(.*\)"$/\1/p' "$COMPLETION")
for sub in $subcommands; do
	section=$(man_section "$MAN/diskcrypt.8.md" "## $sub")
	[[ -n "$section" ]] || fail "diskcrypt.8.md has no section '## $sub'"
	[[ " $completion_commands " == *" $sub "* ]] || fail "the completion does not offer '$sub'"
	from_help=$("$cli" "$sub" --help | help_options)
	from_man=$(man_options <<<"$section")
	from_completion=$(awk -v s="$sub" '$0 ~ "^    " s "[ |)]" || $0 ~ "\\| " s "\\)" {
		for (i = 1; i <= NF; i++) if ($i ~ /^"?--/) { gsub(/[";]/, "", $i); print $i } }' "$COMPLETION" | sort -u)
	while read -r opt; do
		[[ -z "$opt" ]] && continue
		grep -qx -- "$opt" <<<"$from_man" || fail "diskcrypt $sub $opt: not in diskcrypt.8.md"
		grep -qx -- "$opt" <<<"$from_completion" || fail "diskcrypt $sub $opt: not in the completion"
	done <<<"$from_help"
	while read -r opt; do
		[[ -z "$opt" ]] && continue
		grep -qx -- "$opt" <<<"$from_help" || fail "diskcrypt.8.md: '$sub $opt' is not an option of diskcrypt $sub"
	done <<<"$from_man"
	while read -r opt; do
		[[ -z "$opt" ]] && continue
		grep -qx -- "$opt" <<<"$from_help" || fail "the completion offers '$sub $opt', not an option of diskcrypt $sub"
	done <<<"$from_completion"
done
for sub in $completion_commands; do
	grep -qx -- "$sub" <<<"$subcommands" || fail "the completion offers '$sub', not a subcommand"
done

# Global options and the exit statuses.
global_man=$(man_section "$MAN/diskcrypt.8.md" "# GLOBAL OPTIONS" | man_options)
for opt in $("$cli" --help | awk '/^Subcommands:/ { exit } { print }' | help_options); do
	grep -qx -- "$opt" <<<"$global_man" || fail "diskcrypt $opt: not in diskcrypt.8.md (GLOBAL OPTIONS)"
done
exits=$(man_section "$MAN/diskcrypt.8.md" "# EXIT STATUS" | awk '/^\*\*[0-9]+\*\*$/ { n = $0; gsub(/\*/, "", n); next }
	/^: / { sub(/^: /, ""); print n "  " $0 }')
while read -r line; do
	code=$(awk '{ print $1 }' <<<"$line")
	text=$(sed -E 's/^ *[0-9]+ +//' <<<"$line")
	grep -qxF -- "$code  $text" <<<"$exits" || fail "exit status '$code $text' of --help is not in diskcrypt.8.md"
done < <("$cli" --help | awk '/^Exit status:/ { on = 1; next } on && /^  [0-9]/')
[[ $(wc -l <<<"$exits") == $("$cli" --help | awk '/^Exit status:/ { on = 1; next } on && /^  [0-9]/' | wc -l) ]] ||
	fail "diskcrypt.8.md lists another number of exit statuses than --help"

# The agent.
agent_man=$(man_section "$MAN/diskcrypt-agent.8.md" "# OPTIONS" | man_options)
agent_help=$("$agent" --help | help_options)
for opt in $agent_help; do
	grep -qx -- "$opt" <<<"$agent_man" || fail "diskcrypt-agent $opt: not in diskcrypt-agent.8.md"
done
for opt in $agent_man; do
	grep -qx -- "$opt" <<<"$agent_help" || fail "diskcrypt-agent.8.md: '$opt' is not an option of diskcrypt-agent"
done

# Every section and key of the example configuration is in diskcrypt-agent.toml(5).
config_man=$MAN/diskcrypt-agent.toml.5.md
while read -r key; do
	grep -qE "^\*\*$key\*\*|^\*\*[a-z_]+\*\*, \*\*$key\*\*" "$config_man" ||
		fail "agent.toml.example key '$key' is not in diskcrypt-agent.toml.5.md"
done < <(sed -nE 's/^#? ?([a-z_]+) = .*/\1/p' "$ROOT/agent/agent.toml.example" | sort -u)
while read -r section; do
	grep -qE "^# \[$section" "$config_man" || fail "section [$section] is not in diskcrypt-agent.toml.5.md"
done < <(sed -nE 's/^\[([a-z_]+)[].].*/\1/p' "$ROOT/agent/agent.toml.example" | sort -u)

if ((failures)); then
	echo "check-docs: $failures problems" >&2
	exit 1
fi
echo "check-docs: $(wc -w <<<"$subcommands") subcommands, their options and the exit statuses agree with the man pages and the completion"
