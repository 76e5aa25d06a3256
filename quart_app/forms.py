"""The HTML forms, with their CSRF token (WTForms, the token kept in the signed session)."""

from __future__ import annotations

from typing import Any

from quart import current_app, session
from wtforms import Form, IntegerField, StringField
from wtforms.csrf.session import SessionCSRF
from wtforms.validators import InputRequired, Length, NumberRange

#: The most numbers the front page squares and adds up in one chord: enough to watch the
#: tasks end side by side, few enough that a page's visitor cannot flood the workers.
MAX_NUMBERS = 20


class SessionCSRFForm(Form):
    """A form whose CSRF token is checked against the one kept in the session."""

    class Meta:
        csrf = True
        csrf_class = SessionCSRF


class MessageForm(SessionCSRFForm):
    """The front page's form: a message for `simple_task`."""

    message = StringField("Message", validators=[InputRequired(), Length(max=1000)])


class SumOfSquaresForm(SessionCSRFForm):
    """The front page's second form: how many numbers (1 to `count`) a chord of `square`s
    and `total` adds up the squares of."""

    # The bounds are rendered too (`min`, `max`): the browser says what is wrong before a post.
    count = IntegerField(
        "n", default=5, validators=[InputRequired(), NumberRange(min=1, max=MAX_NUMBERS)]
    )


def message_form(formdata: Any = None) -> MessageForm:
    """The form, bound to this session's CSRF token and, on a POST, to the posted data."""
    return MessageForm(formdata, meta=_csrf_meta())


def sum_of_squares_form(formdata: Any = None) -> SumOfSquaresForm:
    """The chord's form, as `message_form`; its fields' names start with `chord-`, so that
    they and their ids differ from the message form's on the same page."""
    return SumOfSquaresForm(formdata, prefix="chord", meta=_csrf_meta())


def _csrf_meta() -> dict[str, Any]:
    """What binds a form's CSRF token to this session."""
    secret = str(current_app.config["SECRET_KEY"]).encode()
    return {"csrf_secret": secret, "csrf_context": session}
