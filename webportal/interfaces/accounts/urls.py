from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from webportal.interfaces.accounts import views

app_name = "accounts"

urlpatterns = [
    path("lab/", views.lab_home, name="lab_home"),
    path("lab/<int:lab_id>/members/", views.members, name="members"),
    path(
        "lab/<int:lab_id>/members/<int:membership_id>/role/",
        views.member_role,
        name="member_role",
    ),
    path(
        "lab/<int:lab_id>/members/<int:membership_id>/person/",
        views.member_person,
        name="member_person",
    ),
    path("lab/<int:lab_id>/details/", views.lab_details, name="lab_details"),
    path(
        "lab/<int:lab_id>/members/<int:membership_id>/remove/",
        views.member_remove,
        name="member_remove",
    ),
    path(
        "lab/<int:lab_id>/members/<int:membership_id>/unlock/",
        views.member_unlock,
        name="member_unlock",
    ),
    path("lab/<int:lab_id>/model/", views.lab_model, name="lab_model"),
    path("lab/<int:lab_id>/ranges/", views.reference_ranges, name="reference_ranges"),
    path("account/invitations/", views.invitations, name="invitations"),
    path(
        "account/invitations/<int:invitation_id>/answer/",
        views.answer_invitation,
        name="answer_invitation",
    ),
    path(
        "account/password/",
        auth_views.PasswordChangeView.as_view(
            success_url=reverse_lazy("accounts:password_change_done")
        ),
        name="password_change",
    ),
    path(
        "account/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
]
