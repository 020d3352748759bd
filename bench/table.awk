# Turns bench/run's raw results (TSV: lua impl case rep rc user sys maxrss_kb self_cpu wall detail)
# into the side-by-side table: medians per Lua version, case and implementation.
# Exit status 1 when any run failed (wrong result, crash or timeout).

function median(list,    n, a, i, j, t) {
  n = split(list, a, " ")
  if (n == 0) return ""
  for (i = 2; i <= n; i++) {
    t = a[i] + 0; j = i - 1
    while (j >= 1 && a[j] + 0 > t) { a[j + 1] = a[j]; j-- }
    a[j + 1] = t
  }
  if (n % 2) return a[(n + 1) / 2] + 0
  return (a[n / 2] + a[n / 2 + 1]) / 2
}
function fmt_cpu(x) { return x == "" ? "-" : sprintf("%.3f", x) }
function fmt_mb(x)  { return x == "" ? "-" : sprintf("%.1f", x / 1024) }
function cell(impl, l, c,    k) {
  k = l SUBSEP impl SUBSEP c
  if (fails[k] > 0 && cpu[k] == "") return sprintf("%-8s %-8s", "FAILED", "")
  if (!(k in cpu) && !(k in fails)) return sprintf("%-8s %-8s", "-", "")
  return sprintf("%-8s %-8s", fmt_cpu(median(cpu[k])) (fails[k] > 0 ? "!" : ""), fmt_mb(median(rss[k])))
}

BEGIN {
  FS = "\t"
  what["C0"]  = "load copas + empty loop (baseline)"
  what["C1"]  = "2 threads pause(0), 1M switches"
  what["C2"]  = "100k threads pause(random 0..1 s)"
  what["F2"]  = "C2's VM floor: no scheduler at all"
  what["C3"]  = "200k semaphore round trips"
  what["C4a"] = "queue 200k items, one batch"
  what["C4b"] = "queue 200k items, push+pause(0)"
  what["C5"]  = "10k one-shot timers 0.01..0.5 s"
  # the issue's reference figures for upstream Copas 4.11 on Lua 5.4 (CPU s)
  ref["C1"] = "1.05"; ref["C2"] = "1.03"; ref["C3"] = "0.96"; ref["C4b"] = "0.58"; ref["C5"] = "0.20"
  ncase = split("C0 C1 C2 F2 C3 C4a C4b C5", order, " ")
  nthreads = int(100000 * scale + 0.5)
  status = 0
}
NR == 1 { next }
{
  k = $1 SUBSEP $2 SUBSEP $3
  seen_case[$1 SUBSEP $3] = 1
  if ($5 == 0 && $6 != "-") {
    # CPU: the process's own clock() at its end (fine-grained); GNU time's user+sys (1/100 s)
    # is kept as a cross-check for work done outside the Lua program (start-up, exit)
    cpu[k] = cpu[k] " " ($9 != "-" && $9 != "" ? $9 : $6 + $7)
    tcpu[k] = tcpu[k] " " ($6 + $7)
    rss[k] = rss[k] " " $8
  } else {
    fails[k]++
    status = 1
  }
}
END {
  nl = split(luas, L, " ")
  for (i = 1; i <= nl; i++) {
    l = L[i]
    printf "Lua %s: median of %s run(s) per cell; CPU = process user+sys s; RSS = max resident MB%s\n", l, reps, \
      (scale != 1 ? sprintf("; SCALE %s (not comparable with the reference)", scale) : "")
    printf "%-4s %-36s %-17s %-17s %-9s %-6s %s\n", "", "", "upstream", "ours", "speed-up", (l == "5.4" ? "ref" : ""), "target"
    printf "%-4s %-36s %-8s %-8s %-8s %-8s %-9s %-6s %s\n", "case", "work", "CPU s", "RSS MB", "CPU s", "RSS MB", "up/ours", (l == "5.4" ? "5.4" : ""), ">=5x"
    for (j = 1; j <= ncase; j++) {
      c = order[j]
      if (!((l SUBSEP c) in seen_case)) continue
      ku = l SUBSEP "upstream" SUBSEP c; ko = l SUBSEP "ours" SUBSEP c
      mu = median(cpu[ku]); mo = median(cpu[ko])
      sp = "-"; verdict = ""
      if (mu != "" && mo != "") {
        if (mo > 0) sp = sprintf("%.1fx", mu / mo)
        else if (mu > 0) sp = ">" sprintf("%.0fx", mu / 0.0001)
        else sp = "n/a"
        if (c != "C0" && c != "C4a" && c != "F2") verdict = (mo == 0 || mu / mo >= 5) ? "ok" : "BELOW 5x"
        if (c == "C4a") verdict = (mo == 0 || mu / mo >= 5) ? "ok (no target)" : "(no target)"
      }
      for (m = 1; m <= 2; m++) {
        kk = (m == 1 ? ku : ko)
        a = median(cpu[kk]); b = median(tcpu[kk])
        if (a != "" && b - a > 0.03 + 0.1 * a)
          verdict = verdict sprintf(" (%s: GNU time says %.2f s)", (m == 1 ? "upstream" : "ours"), b)
      }
      if (fails[ko] > 0) verdict = verdict " ours FAILED " fails[ko] "x"
      if (fails[ku] > 0) verdict = verdict " upstream FAILED " fails[ku] "x"
      r = (l == "5.4" && (c in ref)) ? ref[c] " s" : ""
      printf "%-4s %-36s %s %s %-9s %-6s %s\n", c, what[c], cell("upstream", l, c), cell("ours", l, c), sp, r, verdict
    }
    # memory per paused thread: (RSS C2 - RSS C0) / threads
    if (((l SUBSEP "C2") in seen_case) && ((l SUBSEP "C0") in seen_case)) {
      line = "C2 memory per paused thread ((RSS C2 - RSS C0) / " nthreads "):"
      for (m = 1; m <= 2; m++) {
        impl = (m == 1 ? "upstream" : "ours")
        a = median(rss[l SUBSEP impl SUBSEP "C2"]); b = median(rss[l SUBSEP impl SUBSEP "C0"])
        if (a != "" && b != "") { per[impl] = (a - b) * 1024 / nthreads; line = line sprintf(" %s %.0f B", impl, per[impl]) }
        else { per[impl] = ""; line = line " " impl " -" }
      }
      if (per["upstream"] != "" && per["ours"] != "")
        line = line (per["ours"] <= per["upstream"] ? "  -> ok (target: ours <= upstream)" : "  -> ABOVE upstream (target: ours <= upstream)")
      print line
    }
    # the most any Copas could gain on C2 in this VM: upstream's C2 over the floor
    fu = median(cpu[l SUBSEP "upstream" SUBSEP "C2"]); ff = median(cpu[l SUBSEP "ours" SUBSEP "F2"])
    if (fu != "" && ff != "" && ff > 0)
      printf "C2 floor (F2, the same coroutines without a scheduler): %.3f s; upstream C2 / floor = %.1fx, the bound on any speed-up\n", ff, fu / ff
    if (l == "5.4") print "ref: the issue's figures for upstream Copas 4.11 on Lua 5.4 (another machine); C2 there: 148 MB"
    print ""
  }
  exit status
}
