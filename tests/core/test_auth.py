from __future__ import annotations

from datetime import timedelta

import pytest

from qamqor.core.auth import UserError, authenticate, create_token, create_user, user_for_token
from qamqor.core.errors import AuthenticationError
from qamqor.core.models import User
from qamqor.runtime import Runtime


def test_users_passwords_and_tokens(runtime: Runtime) -> None:
    with runtime.session_factory() as session:
        user = create_user(
            session, username="aigerim", password="long-password", role="radiologist"
        )
        session.commit()
        assert user.password_hash.startswith("$argon2")
        assert authenticate(session, username="aigerim", password="long-password").id == user.id
        with pytest.raises(AuthenticationError):
            authenticate(session, username="aigerim", password="wrong-password")
        with pytest.raises(AuthenticationError):
            authenticate(session, username="nobody", password="long-password")

        token = create_token(session, user=user, name="viewer")
        session.commit()
        assert user_for_token(session, token).username == "aigerim"
        with pytest.raises(AuthenticationError):
            user_for_token(session, token + "x")
        expired = create_token(session, user=user, lifetime=timedelta(seconds=-1))
        with pytest.raises(AuthenticationError):
            user_for_token(session, expired)

        session.get(User, user.id).active = False  # type: ignore[union-attr]
        session.commit()
        with pytest.raises(AuthenticationError):
            user_for_token(session, token)


def test_user_input_is_checked(runtime: Runtime) -> None:
    with runtime.session_factory() as session:
        with pytest.raises(UserError, match="unknown role"):
            create_user(session, username="x", password="long-password", role="wizard")
        with pytest.raises(UserError, match="at least 8"):
            create_user(session, username="x", password="short", role="admin")
        create_user(session, username="x", password="long-password", role="admin")
        with pytest.raises(UserError, match="exists"):
            create_user(session, username="x", password="long-password", role="admin")
