# Sourced by tests/run-all.sh and the benchmarks: `start_moto` installs moto server into .venv
# when missing, starts it on a free loopback port, waits until it listens, exports
# TALLY_TEST_AWS_ENDPOINT plus dummy AWS credentials and region, and stops it when the calling
# script exits. Run from the repository root.

start_moto() {
  if [[ ! -x .venv/bin/moto_server ]]; then
    echo "moto: installing moto[server] into .venv" >&2
    [[ -x .venv/bin/pip ]] || python3 -m venv .venv
    .venv/bin/pip install --quiet 'moto[server]'
  fi
  local port
  port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p target
  # moto's own server, with its TransactWriteItems fixed to copy each table once per
  # transaction instead of once per action (see tests/moto_server.py for why and what).
  .venv/bin/python tests/moto_server.py -H 127.0.0.1 -p "$port" >target/moto.log 2>&1 &
  MOTO_PID=$!
  trap 'kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
      echo "moto: the server did not start:" >&2
      cat target/moto.log >&2
      return 1
    fi
    sleep 0.1
  done
  echo "moto: server on 127.0.0.1:$port (pid $MOTO_PID, log target/moto.log)" >&2
  export TALLY_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"
  # Dummy credentials for moto; nothing here can reach real AWS.
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
  unset AWS_PROFILE AWS_ENDPOINT_URL
}
