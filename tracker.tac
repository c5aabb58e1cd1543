# twistd -ny tracker.tac
# Finds its configuration like `trackermail` and `twistd -n tracker`:
# $TRACKERMAIL_CONFIG, else ./tracker.toml, else the built-in defaults.
from twisted.application import service

from trackermail.service import service_config, twistd_service

application = service.Application("tracker")
twistd_service(service_config()).setServiceParent(application)
