from twisted.application.service import ServiceMaker

tracker = ServiceMaker(
    "trackermail",
    "trackermail.service",
    "Mail engine of a distribution package tracker",
    "tracker",
)
