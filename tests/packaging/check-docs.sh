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
# compare_options WHAT FROM_HELP FROM_MAN FROM_COMPLETION: each list holds
# the others' options ("WHAT" names the subcommand in messages).
compare_options() {
	local what=$1 from_help=$2 from_man=$3 from_completion=$4 opt
	while read -r opt; do
		[[ -z "$opt" ]] && continue
		grep -qx -- "$opt" <<<"$from_man" || fail "diskcrypt $what $opt: not in diskcrypt.8.md"
		grep -qx -- "$opt" <<<"$from_completion" || fail "diskcrypt $what $opt: not in the completion"
	done <<<"$from_help"
	while read -r opt; do
		[[ -z "$opt" ]] && continue
		grep -qx -- "$opt" <<<"$from_help" || fail "diskcrypt.8.md: '$what $opt' is not an option of diskcrypt $what"
	done <<<"$from_man"
	while read -r opt; do
		[[ -z "$opt" ]] && continue
		grep -qx -- "$opt" <<<"$from_help" || fail "the completion offers '$what $opt', not an option of diskcrypt $what"
	done <<<"$from_completion"
}
# completion_options NAME: the options _diskcrypt_options offers for NAME
# (a subcommand, or SUB-NESTED for a nested one such as key-create).
completion_options() {
	awk -v s="$1" '$0 ~ "^    " s "[ |)]" || $0 ~ "\\| " s "[ |)]" {
		for (i = 1; i <= NF; i++) if ($i ~ /^"?--/) { gsub(/[";]/, "", $i); print $i } }' "$COMPLETION" | sort -u
}
nested_count=0
for sub in $subcommands; do
	section=$(man_section "$MAN/diskcrypt.8.md" "## $sub")
	[[ -n "$section" ]] || fail "diskcrypt.8.md has no section '## $sub'"
	[[ " $completion_commands " == *" $sub "* ]] || fail "the completion does not offer '$sub'"
	compare_options "$sub" "$("$cli" "$sub" --help | help_options)" "$(man_options <<<"$section")" \
		"$(completion_options "$sub")"
	# A subcommand with subcommands of its own (key): each has its section
	# "### SUB NESTED" and its completion entry SUB-NESTED.
	nested=$("$cli" "$sub" --help | awk '/^Subcommands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^$/ { exit }')
	for n in $nested; do
		nested_count=$((nested_count + 1))
		section=$(man_section "$MAN/diskcrypt.8.md" "### $sub $n")
		[[ -n "$section" ]] || fail "diskcrypt.8.md has no section '### $sub $n'"
		grep -qE "(^ *|\| )${sub}-${n}[ |)]" "$COMPLETION" || fail "the completion has no entry '$sub-$n'"
		compare_options "$sub $n" "$("$cli" "$sub" "$n" --help | help_options)" "$(man_options <<<"$section")" \
			"$(completion_options "$sub-$n")"
	done
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
echo "check-docs: $(wc -w <<<"$subcommands") subcommands ($nested_count nested), their options and the exit statuses agree with the man pages and the completion"
