# twistd -ny tracker.tac
# Reads the configuration named by TRACKERMAIL_CONFIG (default: tracker.toml).
import os
import sys

from twisted.application import service

from trackermail.config import load_config
from trackermail.service import buildService

_config = load_config(
    os.environ.get("TRACKERMAIL_CONFIG", "tracker.toml"),
    warn=lambda msg: sys.stderr.write(f"trackermail: warning: {msg}\n"),
)
application = service.Application("tracker")
buildService(_config).setServiceParent(application)
