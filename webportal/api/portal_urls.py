from django.urls import path

from webportal.api import portal

app_name = "integrations"

urlpatterns = [
    path("", portal.integrations, name="index"),
    path("tokens/<int:token_id>/revoke/", portal.revoke, name="revoke_token"),
]
