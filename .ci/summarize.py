"""Turn trial's closing lines into the plain 'N passed, M failed' line."""
import re
import sys

text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
ran = re.findall(r"^Ran (\d+) tests? in", text, re.M)
total = int(ran[-1]) if ran else 0
counts = {}
tail = text.rsplit("\nRan ", 1)[-1]
for key, value in re.findall(r"(\w+)=(\d+)", tail.splitlines()[-1] if tail else ""):
    counts[key] = int(value)
failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
skipped = counts.get("skips", 0)
passed = counts.get("successes", total - failed - skipped - counts.get("expectedFailures", 0))
print(f"{passed} passed, {failed} failed, {skipped} skipped")
