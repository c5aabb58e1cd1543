"""
Loading the TOML configuration: defaults, overrides, one-line errors.
"""

from twisted.trial.unittest import SynchronousTestCase

from trackermail.config import Config, load_config
from trackermail.errors import ConfigError
from trackermail.service import Options


class ConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self):
        """A file with only fqdn and secret_key gets every other default."""
        config = load_config(self.write('[tracker]\nfqdn = "t.example.org"\nsecret_key = "k"\n'))
        self.assertEqual(config.database.url, "sqlite:///var/tracker.sqlite")
        self.assertEqual(config.lmtp.listen, ("tcp:2424:interface=127.0.0.1",))
        self.assertEqual(config.outbound.connections, 8)
        self.assertEqual(config.bounces.max_days_tolerate_bounce, 4)
        self.assertEqual(config.control.confirmation_expiry_days, 3)
        self.assertEqual((config.outbound.host, config.outbound.port), ("127.0.0.1", 25))
        self.assertEqual(config.tracker.contact_address, "owner@t.example.org")

    def test_missing_fqdn(self):
        """Without [tracker] fqdn the error names the key."""
        with self.assertRaises(ConfigError) as e:
            load_config(self.write('[tracker]\nsecret_key = "k"\n'))
        self.assertTrue(str(e.exception).startswith("[tracker] fqdn: required"))

    def test_missing_secret_outside_dev(self):
        """An empty secret_key is refused unless dev mode generates one."""
        with self.assertRaises(ConfigError) as e:
            load_config(self.write('[tracker]\nfqdn = "t.example.org"\n'))
        self.assertIn("[tracker] secret_key", str(e.exception))
        warnings = []
        config = load_config(self.write('[tracker]\nfqdn = "t.example.org"\ndev = true\n'),
                             warn=warnings.append)
        self.assertEqual(len(config.tracker.secret_key), 64)
        self.assertEqual(len(warnings), 1)

    def test_bad_values_name_their_key(self):
        """Wrong types, unknown keys and bad TOML are one-line errors."""
        cases = {
            '[tracker]\nfqdn = "t.example.org"\nsecret_key = "k"\n[smtp]\nlisten = 5\n':
                "[smtp] listen: expected a list of strings, got 5",
            '[tracker]\nfqdn = "t.example.org"\nsecret_key = "k"\n[outbound]\nconnections = "x"\n':
                "[outbound] connections: expected an integer, got 'x'",
            '[tracker]\nfqdn = "t.example.org"\nsecret_key = "k"\nfoo = 1\n':
                "[tracker] foo: unknown key",
            '[nope]\n': "[nope]: unknown section",
            '[tracker]\nfqdn = "t.example.org"\nsecret_key = "k"\n[database]\nurl = "mysql://x"\n':
                "[database] url: expected sqlite:///PATH or postgresql://..., got 'mysql://x'",
        }
        for text, message in cases.items():
            with self.assertRaises(ConfigError) as e:
                load_config(self.write(text))
            self.assertEqual(str(e.exception), message)
        with self.assertRaises(ConfigError) as e:
            load_config(self.write("[tracker\n"))
        self.assertIn("not valid TOML", str(e.exception))
        self.assertNotIn("\n", str(e.exception))

    def test_options_override_file(self):
        """twistd plugin options override the file's values."""
        path = self.write('[tracker]\nfqdn = "t.example.org"\nsecret_key = "k"\n'
                          '[smtp]\nlisten = ["tcp:25"]\n')
        options = Options()
        options.parseOptions(["--config", path, "--fqdn", "o.example.org",
                              "--smtp", "tcp:2600", "--smtp", "unix:/tmp/x",
                              "--database", "postgresql:///x"])
        config: Config = options.config
        self.assertEqual(config.tracker.fqdn, "o.example.org")
        self.assertEqual(config.smtp.listen, ("tcp:2600", "unix:/tmp/x"))
        self.assertEqual(config.database.url, "postgresql:///x")
        self.assertEqual(config.tracker.secret_key, "k")


class FindConfigTests(SynchronousTestCase):
    def setUp(self):
        import os

        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.local = os.path.join(self.dir, "tracker.toml")

    def test_option_then_environment_then_local_file(self):
        """--config wins, then $TRACKERMAIL_CONFIG, then ./tracker.toml, then nothing."""
        from trackermail.config import find_config

        env = {"TRACKERMAIL_CONFIG": "/etc/trackermail/tracker.toml"}
        self.assertIsNone(find_config(None, {}, cwd=self.dir))
        with open(self.local, "w") as f:
            f.write("")
        self.assertEqual(find_config(None, {}, cwd=self.dir), self.local)
        self.assertEqual(find_config(None, env, cwd=self.dir), "/etc/trackermail/tracker.toml")
        self.assertEqual(find_config("x.toml", env, cwd=self.dir), "x.toml")
        self.assertEqual(find_config(None, {"TRACKERMAIL_CONFIG": ""}, cwd=self.dir),
                         self.local)


class EndpointCheckTests(SynchronousTestCase):
    def check(self, section, *endpoints):
        from trackermail.config import check_endpoints

        config = Config().replace(**{section: {"listen": list(endpoints)}})
        check_endpoints(config)

    def test_good_endpoints_pass(self):
        """TCP, TCP6 and UNIX endpoint strings pass without a reactor or a socket."""
        self.check("smtp", "tcp:2525:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1")
        self.check("lmtp", "unix:/run/trackermail/lmtp:mode=660")

    def test_bad_endpoints_name_key_and_value(self):
        """A bad endpoint is one line naming the key and the string."""
        for section, endpoint, message in [
            ("smtp", "tcp:99999", "[smtp] listen: bad endpoint 'tcp:99999': "
                                  "port 99999 is not between 0 and 65535"),
            ("lmtp", "2424", "[lmtp] listen: bad endpoint '2424': Unknown endpoint type: "
                             "'2424' (a port alone is not an endpoint: write tcp:2424)"),
            ("http", "tcp:80:bogus=1", "[http] listen: bad endpoint 'tcp:80:bogus=1': "
                                       "_parseTCP() got an unexpected keyword argument 'bogus'"),
            ("smtp", "tcp:x", "[smtp] listen: bad endpoint 'tcp:x': "
                              "invalid literal for int() with base 10: 'x'"),
        ]:
            with self.assertRaises(ConfigError) as e:
                self.check(section, endpoint)
            self.assertEqual(str(e.exception), message)
