from django.urls import path

from webportal.interfaces.api import personal

app_name = "personal_tokens"

urlpatterns = [
    path("", personal.personal_tokens, name="index"),
    path("<int:token_id>/revoke/", personal.revoke_personal_token, name="revoke"),
]
