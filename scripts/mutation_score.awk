# The mutation score per module from `mutmut results --all true` (run with awk -F": "): mutants killed (timeouts
# included, as mutmut counts them) over mutants checked; a module not run is listed as not checked.
NF == 2 {
  name = $1; gsub(/^ +/, "", name); sub(/\.x[_ǁ].*$/, "", name)
  if ($2 == "not checked") { skipped[name]++; next }
  total[name]++; if ($2 == "killed" || $2 == "timeout") killed[name]++
}
END {
  for (m in total) printf "%-28s %5d of %5d killed  %5.1f %%\n", m, killed[m], total[m], 100 * killed[m] / total[m]
  for (m in skipped) if (!(m in total)) printf "%-28s not checked (%d mutants)\n", m, skipped[m]
}
