"""trackermail: the mail engine of a distribution package tracker."""
