// UDP server module for the reference StatsD in bench/agent.py: the same as statsd's own
// servers/udp.js, plus an optional `recvBufferSize` so both daemons can get the same socket
// receive buffer when the bench is asked for one (--rcvbuf-bytes).
const dgram = require('dgram');

exports.start = function (config, callback) {
  const options = {type: config.address_ipv6 ? 'udp6' : 'udp4'};
  if (config.recvBufferSize) {
    options.recvBufferSize = config.recvBufferSize;
  }
  const server = dgram.createSocket(options, callback);
  server.bind(config.port || 8125, config.address || undefined);
  this.server = server;
  return true;
};
