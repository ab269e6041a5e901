-- Ask for the paths given after `--` in turn, one per request (wrk's own per-request script hook), and report like
-- report.lua (its path in BENCH_WRK_REPORT), so one wrk run measures a mix of list queries.
dofile(os.getenv("BENCH_WRK_REPORT"))

init = function(args)
  paths = args
  position = 0
end

request = function()
  position = position % #paths + 1
  return wrk.format("GET", paths[position])
end
