"""One Twilio call update made with Twilio's own Python helper library, pointed at switchboard.

    python call_update.py BASE_URL ACCOUNT_SID API_KEY CALL_SID TWIML

The library is left as agents use it (`Client(account_sid, auth_token)`, then
`client.calls(sid).update(twiml=...)`); only the API domain's base URL is moved from
https://api.twilio.com to BASE_URL (switchboard's admin address). No region or edge is set, so
the library does not rewrite the host. Prints one JSON line: the HTTP status and either the
call's status or Twilio's error code and message.
"""

import json
import sys

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client


def main() -> None:
    base_url, account_sid, api_key, call_sid, twiml = sys.argv[1:6]
    client = Client(account_sid, api_key)
    client.api.base_url = base_url
    try:
        call = client.calls(call_sid).update(twiml=twiml)
        print(json.dumps({"status": 200, "call_status": call.status, "sid": call.sid}))
    except TwilioRestException as e:
        print(json.dumps({"status": e.status, "code": e.code, "message": e.msg}))


if __name__ == "__main__":
    main()
