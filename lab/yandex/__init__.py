"""An emulated Yandex Cloud: a fake of its REST API (fake_api) that checks every request against
the published API definitions (rules)."""
