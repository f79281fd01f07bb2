// A StatsD (npm `statsd`) backend for bench/agent.py: keeps the running total of the daemon's
// own statsd.metrics_received counter (reset at every flush) and reports it on the
// management port's `stats` command as `tallybench.metrics_received_total: N`.
let total = 0;
exports.init = function (startupTime, config, events, logger) {
  const key = (config.prefixStats || 'statsd') + '.metrics_received';
  events.on('flush', function (ts, metrics) {
    total += metrics.counters[key] || 0;
  });
  events.on('status', function (write) {
    write(null, 'tallybench', 'metrics_received_total', total);
  });
  return true;
};
