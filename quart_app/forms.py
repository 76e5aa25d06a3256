"""The HTML form, with its CSRF token (WTForms, the token kept in the signed session)."""

from __future__ import annotations

from typing import Any

from quart import current_app, session
from wtforms import Form, StringField
from wtforms.csrf.session import SessionCSRF
from wtforms.validators import InputRequired, Length


class MessageForm(Form):
    """The front page's form: a message for `simple_task`."""

    class Meta:
        csrf = True
        csrf_class = SessionCSRF

    message = StringField("Message", validators=[InputRequired(), Length(max=1000)])


def message_form(formdata: Any = None) -> MessageForm:
    """The form, bound to this session's CSRF token and, on a POST, to the posted data."""
    secret = str(current_app.config["SECRET_KEY"]).encode()
    return MessageForm(formdata, meta={"csrf_secret": secret, "csrf_context": session})
