"""Test doubles shared by several test modules."""
