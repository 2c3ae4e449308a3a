"""Plays the user in oidc-provider's development login and consent pages.

usage: login.py AUTHORIZE_URL REDIRECT_URI [USER]
Follows the authorization request through login and consent with a cookie jar,
stops at the redirect to REDIRECT_URI, and prints that URL (with ?code=…&state=…)
on stdout. The caller (credgate, or a test) owns PKCE and the code exchange.
"""
import re
import sys
from urllib.parse import urljoin

import requests

authorize_url, redirect_uri = sys.argv[1], sys.argv[2]
user = sys.argv[3] if len(sys.argv) > 3 else "alice"
session = requests.Session()
session.trust_env = False  # never send this through a proxy from the environment
url = authorize_url
for _ in range(20):
    if url.startswith(redirect_uri):
        print(url)
        sys.exit(0)
    response = session.get(url, allow_redirects=False, timeout=10)
    if response.is_redirect:
        url = urljoin(url, response.headers["location"])
        continue
    # An interaction page: a login form or a consent form.
    match = re.search(r'action="([^"]+)"', response.text)
    if response.status_code != 200 or not match:
        sys.exit(f"unexpected page at {url}: HTTP {response.status_code}\n{response.text[:500]}")
    action = urljoin(url, match.group(1))
    if 'name="login"' in response.text:
        form = {"prompt": "login", "login": user, "password": "any"}
    else:
        form = {"prompt": "consent"}
    response = session.post(action, data=form, allow_redirects=False, timeout=10)
    if not response.is_redirect:
        sys.exit(f"form at {action} did not redirect: HTTP {response.status_code}\n{response.text[:500]}")
    url = urljoin(action, response.headers["location"])
sys.exit("too many steps")
