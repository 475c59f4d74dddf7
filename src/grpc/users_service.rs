//! `kms.v1.Users`.

use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{auth_layer::caller, convert::timestamp};
use crate::{
    domain::users::{PasswordChange, UserAdmin, UserView},
    proto::kms::v1::{self as pb, users_server::Users},
};

pub struct UsersApi {
    service: UserAdmin,
}

impl UsersApi {
    pub fn new(service: UserAdmin) -> Self {
        Self { service }
    }
}

fn user(view: UserView) -> pb::User {
    pb::User {
        username: view.username,
        roles: view.roles,
        created_at: Some(timestamp(view.created_at)),
        updated_at: Some(timestamp(view.updated_at)),
    }
}

#[tonic::async_trait]
impl Users for UsersApi {
    async fn list_users(
        &self,
        mut request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = caller(&mut request)?;
        let req = request.get_ref();
        let (users, next_page_token) = self
            .service
            .list(&caller, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(user).collect(),
            next_page_token,
        }))
    }

    async fn get_user(
        &self,
        mut request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller(&mut request)?;
        let found = self
            .service
            .get(&caller, &request.get_ref().username)
            .await?;
        Ok(Response::new(user(found)))
    }

    async fn set_roles(
        &self,
        mut request: Request<pb::SetRolesRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller(&mut request)?;
        let req = request.get_ref();
        let updated = self
            .service
            .set_roles(&caller, &req.username, &req.roles)
            .await?;
        Ok(Response::new(user(updated)))
    }

    async fn delete_user(
        &self,
        mut request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = caller(&mut request)?;
        self.service
            .delete(&caller, &request.get_ref().username)
            .await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn change_password(
        &self,
        mut request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = caller(&mut request)?;
        // The TCP peer, as for Login: never a header a client could forge.
        let client = super::client_ip(&request);
        let req = request.into_inner();
        self.service
            .change_password(
                &caller,
                PasswordChange {
                    username: req.username,
                    old_password: Zeroizing::new(req.old_password),
                    new_password: Zeroizing::new(req.new_password),
                    client,
                },
            )
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }
}
