"""wechatpy itself against the fake WeChat and wxtokend's Redis mirror.

A WeChatClient configured as the README says (RedisStorage on the mirror,
auto_retry=False) calls an API that needs a valid access token
(getcallbackip, which the fake refuses with 40001/42001 for a dead token)
and reads its JS-SDK ticket (get_jsapi_ticket: wechatpy's own cache in
Redis, `{appid}_jsapi_ticket` and its `_expires_at`; on a miss it calls
ticket/getticket itself) every 200 ms for PROOF_SECONDS. Only the URLs are
pointed at the fake: the API base, and the token URL wechatpy would fetch
from, so that any token or ticket fetch of its own is counted there.
Prints one JSON line: {"tokens": [...], "tickets": [...], "calls": N}.
"""

import json
import os
import sys
import time

import redis
from wechatpy import WeChatClient
from wechatpy.session.redisstorage import RedisStorage

FAKE = os.environ["FAKE_WECHAT_URL"].rstrip("/")


class Client(WeChatClient):
    API_BASE_URL = FAKE + "/cgi-bin/"

    def fetch_access_token(self):
        # wechatpy's own fetch, only aimed at the fake (it hard-codes
        # https://api.weixin.qq.com/cgi-bin/token): counted there.
        return self._fetch_access_token(
            url=FAKE + "/cgi-bin/token",
            params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
        )


def main():
    storage = RedisStorage(redis.Redis.from_url(os.environ["REDIS_URL"]), prefix="wechatpy")
    client = Client(os.environ["APPID"], os.environ["APPSECRET"], session=storage, auto_retry=False)
    deadline = time.time() + float(os.environ["PROOF_SECONDS"])
    tokens, tickets, calls = [], [], 0
    while time.time() < deadline:
        token = client.access_token
        if token not in tokens:
            tokens.append(token)
        # Raises WeChatClientException on 40001/42001 (auto_retry=False).
        client.misc.get_wechat_ips()
        ticket = client.jsapi.get_jsapi_ticket()
        if ticket not in tickets:
            tickets.append(ticket)
        calls += 1
        time.sleep(0.2)
    print(json.dumps({"tokens": tokens, "tickets": tickets, "calls": calls}))


if __name__ == "__main__":
    sys.exit(main())
