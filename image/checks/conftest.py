"""Expectations for the image checks come from the build (ONEDOTZERO_EXPECT, a JSON file)."""

import json
import os

import pytest


@pytest.fixture(scope="session")
def expect() -> dict:
    return json.loads(open(os.environ["ONEDOTZERO_EXPECT"]).read())
